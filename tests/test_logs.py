"""Logged interactions: the Parquet format round trip, validation of bad logs, logging policies."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsim_mm import ItemSpace
from recsim_mm.logging_policies import (
    EpsilonMixture,
    PopularityPolicy,
    ProductionPolicy,
    UniformPolicy,
    collect,
)
from recsim_mm.logs import InteractionLog

SPACE = ItemSpace.random(40, d_text=4, d_image=4, seed=1)


def records(m: int = 12, k: int = 5, s: int = 2, seed: int = 0) -> dict[str, list]:
    """Column lists in the file format, as a user would assemble them."""
    rng = np.random.default_rng(seed)
    ids = SPACE.item_ids
    cols: dict[str, list] = {name: [] for name in (
        "user_id", "step", "history_item_ids", "history_clicked", "history_engagement",
        "candidate_ids", "shown_positions", "clicked_slot", "engagement", "propensity",
        "time_left", "true_affinity")}
    for r in range(m):
        n_hist = r % 4
        cols["user_id"].append(f"u{r // 3}")
        cols["step"].append(r % 3)
        cols["history_item_ids"].append([ids[i] for i in rng.integers(0, 40, n_hist)])
        cols["history_clicked"].append(rng.integers(0, 2, n_hist).astype(float).tolist())
        cols["history_engagement"].append(rng.uniform(0, 5, n_hist).tolist())
        cols["candidate_ids"].append([ids[i] for i in rng.choice(40, k, replace=False)])
        cols["shown_positions"].append(rng.choice(k, s, replace=False).tolist())
        slot = int(rng.integers(-1, s))
        cols["clicked_slot"].append(slot)
        cols["engagement"].append(0.0 if slot < 0 else float(rng.uniform(1, 6)))
        cols["propensity"].append(1.0 / (k * (k - 1)))
        cols["time_left"].append(float(rng.uniform(0, 60)))
        cols["true_affinity"].append(rng.uniform(-1, 1, k).tolist())
    return cols


def test_parquet_round_trip_keeps_every_field(tmp_path):
    log = InteractionLog.from_records(records(), SPACE)
    path = tmp_path / "log.parquet"
    log.save(path)
    back = InteractionLog.load(path, SPACE)
    assert back.source == str(path)
    for name in ("user_id", "step", "history_items", "history_feedback", "history_mask",
                 "candidate_items", "shown", "clicked_slot", "engagement", "propensity",
                 "time_left", "true_affinity"):
        np.testing.assert_array_equal(getattr(back, name), getattr(log, name), err_msg=name)
    # Stored as strings: the file refers to the catalog's ids, not to rows.
    table = pq.read_table(path)
    assert table.schema.field("candidate_ids").type == pa.list_(pa.string())
    assert table.column("candidate_ids")[0].as_py()[0] in SPACE.item_ids


def test_history_is_left_padded_most_recent_last():
    cols = records()
    log = InteractionLog.from_records(cols, SPACE)
    record = 3  # has 3 history steps, H = 3
    assert log.history_mask[1].tolist() == [0.0, 0.0, 1.0]
    assert log.history_items[record].tolist() == SPACE.index_of(cols["history_item_ids"][record]).tolist()


def test_unknown_item_id_is_named_with_its_record(tmp_path):
    cols = records()
    cols["candidate_ids"][4][2] = "no-such-item"
    pq.write_table(pa.table(cols), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"unknown item id 'no-such-item' in column 'candidate_ids', record 4"):
        InteractionLog.load(tmp_path / "bad.parquet", SPACE)


def test_empty_log_is_refused(tmp_path):
    cols = {name: [] for name in records()}
    schema = pq.read_table(_write(tmp_path, records())).schema
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="empty"):
        InteractionLog.load(tmp_path / "empty.parquet", SPACE)


@pytest.mark.parametrize("column,record", [("engagement", 2), ("history_engagement", 5), ("time_left", 7)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_values_are_refused(tmp_path, column, record, bad):
    cols = records()
    if column == "history_engagement":
        cols[column][record][0] = bad
    else:
        cols[column][record] = bad
    path = _write(tmp_path, cols)
    with pytest.raises(ValueError, match=rf"{column.split('_')[-1]}.*NaN or infinite.*record {record}"):
        InteractionLog.load(path, SPACE)


def test_missing_column_and_bad_propensity_are_named(tmp_path):
    cols = records()
    del cols["propensity"]
    with pytest.raises(ValueError, match="missing column.*propensity"):
        InteractionLog.load(_write(tmp_path, cols), SPACE)
    cols = records()
    cols["propensity"][6] = 0.0
    with pytest.raises(ValueError, match=r"propensity must be in \(0, 1\]; record 6"):
        InteractionLog.from_records(cols, SPACE)


def test_repeated_slate_entry_is_refused():
    cols = records()
    cols["shown_positions"][1] = [3, 3]
    with pytest.raises(ValueError, match="record 1 shows the same candidate twice"):
        InteractionLog.from_records(cols, SPACE)


def test_split_by_user_has_no_user_in_both():
    log = InteractionLog.from_records(records(m=60), SPACE)
    train, val = log.split_by_user(0.25, seed=0)
    assert len(train) + len(val) == len(log)
    assert not set(train.user_id) & set(val.user_id)
    again, _ = log.split_by_user(0.25, seed=0)
    np.testing.assert_array_equal(again.user_id, train.user_id)


def _write(tmp_path, cols) -> str:
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.mark.parametrize(
    "policy",
    [UniformPolicy(), PopularityPolicy(torch.linspace(1, 3, 40)), ProductionPolicy(0.2, 0.3),
     EpsilonMixture(ProductionPolicy(0.2, 0.3), 0.25)],
    ids=["uniform", "popularity", "production", "epsilon"],
)
@pytest.mark.parametrize("slate_size", [1, 2])
def test_logged_propensity_matches_empirical_slate_frequency(policy, slate_size):
    g = torch.Generator().manual_seed(0)
    n = 100_000 if policy.uses_true_affinity else 20_000  # noisy logits: heavier IPS tail
    candidates = torch.tensor([3, 7, 11, 19]).expand(n, 4)
    affinity = torch.tensor([0.5, 0.1, -0.2, 0.3]).expand(n, 4)
    shown, propensity = policy.sample(candidates, affinity, slate_size, g)
    key = shown[:, 0] * 4 + (shown[:, 1] if slate_size == 2 else 0)
    # The IPS identity: for every slate k, E[1{shown = k} / propensity] = 1, exactly
    # when the logged propensity is the probability the policy used (noisy or not).
    num_slates = 4 if slate_size == 1 else 12
    assert len(key.unique()) == num_slates
    for k in key.unique():
        assert abs(((key == k) / propensity).mean().item() - 1.0) < 0.1
    if isinstance(policy, UniformPolicy):
        assert torch.allclose(propensity, torch.full((n,), 1.0 / num_slates, dtype=torch.float64))


def small_simulator(obs_mode: str = "ids", slate_size: int = 1):
    from recsim_mm.simulator import Simulator
    from recsim_mm.users import InterestEvolutionUser

    users = InterestEvolutionUser(SPACE, num_users=16)
    return Simulator(SPACE, users, num_candidates=6, history_length=4, slate_size=slate_size,
                     obs_mode=obs_mode, max_steps=12)


@pytest.mark.parametrize("slate_size", [1, 3])
def test_collect_logs_every_step_of_every_user_reproducibly(slate_size, tmp_path):
    policy = EpsilonMixture(ProductionPolicy(), 0.3)
    log = InteractionLog.load(_saved(collect(small_simulator(slate_size=slate_size), policy, 40, 12, seed=4), tmp_path), SPACE)
    again = collect(small_simulator(slate_size=slate_size), policy, 40, 12, seed=4)
    assert len(np.unique(log.user_id)) == 40 and log.slate_size == slate_size
    np.testing.assert_array_equal(log.clicked_slot, again.clicked_slot)
    np.testing.assert_array_equal(log.propensity, again.propensity)
    # Steps of each user are consecutive from 0, and the history grows with them.
    for user in np.unique(log.user_id)[:5]:
        steps = log.step[log.user_id == user]
        assert steps.tolist() == list(range(len(steps)))
        assert log.history_mask[log.user_id == user].sum(1).tolist() == [min(s, 4) for s in steps]
    assert log.true_affinity is not None and (log.propensity > 0).all()


def _saved(log: InteractionLog, tmp_path) -> str:
    path = tmp_path / "collected.parquet"
    log.save(path)
    return str(path)


def test_collect_refuses_an_embeddings_mode_simulator():
    with pytest.raises(ValueError, match="obs_mode='ids'"):
        collect(small_simulator("embeddings"), UniformPolicy(), 4, 2)


def test_null_values_are_named(tmp_path):
    cols = records()
    cols["time_left"][5] = None
    with pytest.raises(ValueError, match="column 'time_left' is null in record 5"):
        InteractionLog.load(_write(tmp_path, cols), SPACE)
    cols = records()
    cols["history_engagement"][3][1] = None
    with pytest.raises(ValueError, match="column 'history_engagement' has a null entry in record 3"):
        InteractionLog.from_records(cols, SPACE)


def test_logging_policy_names_stay_importable_from_recsim_mm_logs():
    import recsim_mm.logging_policies as moved
    import recsim_mm.logs as logs
    from recsim_mm.logs import EpsilonMixture as Eps
    from recsim_mm.logs import collect as collect_from_logs

    assert Eps is moved.EpsilonMixture and collect_from_logs is moved.collect
    for name in ("LoggingPolicy", "UniformPolicy", "PopularityPolicy", "ProductionPolicy"):
        assert getattr(logs, name) is getattr(moved, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        logs.no_such_name  # noqa: B018
