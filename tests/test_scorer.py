"""The shared scorer network: equivariance, observation modes, ablations, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from recsim_mm import ItemSpace
from recsim_mm.scorer import Scorer, ScorerConfig

SPACE = ItemSpace.random(60, d_text=8, d_image=6, seed=3)
VARIANTS = [
    ("attention", "gated"),
    ("attention", "cross_attention"),
    ("gru", "gated"),
    ("gru", "cross_attention"),
]


def ids_obs(batch: int = 4, history: int = 5, candidates: int = 7, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, history)
    mask[0] = 0.0  # first user: empty history (episode start)
    mask[1, :2] = 0.0  # second user: left padding
    feedback = torch.stack(
        [torch.randint(2, (batch, history), generator=g).float(), 5 * torch.rand(batch, history, generator=g)], -1
    )
    items = torch.randint(SPACE.num_items, (batch, history), generator=g)
    return {
        "history_items": items * mask.long(),
        "history_feedback": feedback * mask.unsqueeze(-1),
        "history_mask": mask,
        "candidate_items": torch.randint(SPACE.num_items, (batch, candidates), generator=g),
        "time_left": 100 * torch.rand(batch, 1, generator=g),
    }


def as_embeddings(obs: dict) -> dict:
    out = dict(obs)
    out["history_items"] = SPACE.fused[obs["history_items"]] * obs["history_mask"].unsqueeze(-1)
    out["candidate_items"] = SPACE.fused[obs["candidate_items"]]
    return out


def make(seed: int = 0, **overrides) -> Scorer:
    torch.manual_seed(seed)
    return Scorer.for_item_space(SPACE, hidden_dim=16, **overrides).eval()


@pytest.mark.parametrize("encoder,fusion", VARIANTS)
def test_scores_are_permutation_equivariant_over_candidates(encoder, fusion):
    scorer = make(user_encoder=encoder, fusion=fusion)
    obs = ids_obs()
    perm = torch.randperm(obs["candidate_items"].shape[1], generator=torch.Generator().manual_seed(1))
    permuted = dict(obs, candidate_items=obs["candidate_items"][:, perm])
    with torch.no_grad():
        torch.testing.assert_close(scorer(permuted), scorer(obs)[:, perm], rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder,fusion", VARIANTS)
def test_ids_mode_and_embeddings_mode_give_the_same_scores(encoder, fusion):
    scorer = make(user_encoder=encoder, fusion=fusion)
    obs = ids_obs()
    with torch.no_grad():
        torch.testing.assert_close(scorer(obs), scorer(as_embeddings(obs)), rtol=0, atol=1e-6)
        assert scorer.encode_user(obs).shape == (4, 16)
        # the critics' input (PPO's values): from item vectors too (it once raised on an empty torch.cat)
        torch.testing.assert_close(scorer.encode_user(as_embeddings(obs)), scorer.encode_user(obs), rtol=0, atol=1e-6)


def test_state_dict_excludes_item_table_and_moves_between_modes():
    with_table = make(item_features=())  # item metadata is looked up by row: it needs the table
    without = Scorer(with_table.config)
    assert "item_table" not in with_table.state_dict()
    without.load_state_dict(with_table.state_dict())
    obs = ids_obs()
    with torch.no_grad():
        torch.testing.assert_close(without.eval()(as_embeddings(obs)), with_table(obs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder", ["attention", "gru"])
def test_padded_history_steps_do_not_change_scores(encoder):
    scorer = make(user_encoder=encoder)
    obs = ids_obs()
    noisy = dict(obs)
    pad = obs["history_mask"] == 0
    noisy["history_items"] = torch.where(pad, torch.full_like(obs["history_items"], 17), obs["history_items"])
    noisy["history_feedback"] = torch.where(pad.unsqueeze(-1), torch.ones_like(obs["history_feedback"]), obs["history_feedback"])
    with torch.no_grad():
        out = scorer(obs)
        assert torch.isfinite(out).all()  # an all-padding history must not give NaN
        torch.testing.assert_close(scorer(noisy), out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("modality,ignored", [("text", slice(8, 14)), ("image", slice(0, 8))])
def test_modality_ablation_reads_only_its_part(modality, ignored):
    scorer = make(modality=modality, item_features=())  # vectors perturbed off the table: no row lookup
    obs = as_embeddings(ids_obs())
    changed = {k: v.clone() for k, v in obs.items()}
    changed["candidate_items"][..., ignored] = torch.randn_like(changed["candidate_items"][..., ignored])
    changed["history_items"][..., ignored] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(scorer(changed), scorer(obs), rtol=0, atol=1e-6)
    fused = make(modality="fused", item_features=())
    with torch.no_grad():
        assert not torch.allclose(fused(changed), fused(obs))


def test_engagement_head_is_non_negative_minutes():
    out = make().predict(ids_obs())
    assert out["engagement"].shape == out["click_logit"].shape == (4, 7)
    assert (out["engagement"] >= 0).all()


def test_missing_key_is_named():
    obs = ids_obs()
    del obs["history_mask"]
    with pytest.raises(KeyError, match="history_mask"):
        make()(obs)


def test_ids_observation_without_item_table_is_refused():
    scorer = Scorer(make(item_features=()).config)
    with pytest.raises(ValueError, match="no item table"):
        scorer(ids_obs())


def test_wrong_embedding_width_is_refused():
    obs = as_embeddings(ids_obs())
    obs["candidate_items"] = obs["candidate_items"][..., :10]
    with pytest.raises(ValueError, match="candidate_items.*14"):
        make()(obs)


@pytest.mark.parametrize(
    "field,value,pattern",
    [("modality", "audio", "modality='audio'"), ("fusion", "sum", "fusion"), ("hidden_dim", 18, "divisible")],
)
def test_invalid_config_is_refused(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        ScorerConfig(d_text=8, d_image=6, **{field: value})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scorer_runs_on_cuda():
    scorer = make().to("cuda")
    obs = {k: v.to("cuda") for k, v in ids_obs().items()}
    cpu = make()(ids_obs())
    torch.testing.assert_close(scorer(obs).cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoder,fusion", VARIANTS)
def test_catalog_tower_shortcut_matches_per_row_tower_and_gradients(encoder, fusion):
    # 16 users x (5 + 7) lookups > 60 items: ids mode runs the tower once per catalog item.
    obs = ids_obs(batch=16)
    assert obs["history_items"].numel() + obs["candidate_items"].numel() > SPACE.num_items
    ids_scorer = make(user_encoder=encoder, fusion=fusion)
    emb_scorer = make(user_encoder=encoder, fusion=fusion)
    ids_scores = ids_scorer(obs)
    emb_scores = emb_scorer(as_embeddings(obs))
    torch.testing.assert_close(ids_scores, emb_scores, rtol=0, atol=1e-5)
    ids_scores.sum().backward()
    emb_scores.sum().backward()
    for (name, a), (_, b) in zip(ids_scorer.named_parameters(), emb_scorer.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


# -- the split heads, the folded user encoder, the catalog cache (the learner's speed) ----


@pytest.mark.parametrize("encoder,fusion", VARIANTS)
@pytest.mark.parametrize("history_match", [True, False])
def test_split_heads_equal_the_unsplit_computation_on_pair_features(encoder, fusion, history_match):
    scorer = make(user_encoder=encoder, fusion=fusion, history_match=history_match)
    ids = ids_obs(batch=16)
    for obs in (ids, as_embeddings(ids)):
        with torch.no_grad():
            pair = scorer.pair_features(obs)
            out = scorer.predict(obs)
        torch.testing.assert_close(out["click_logit"], scorer.click_head(pair).squeeze(-1), rtol=1e-5, atol=1e-5)
        # with item durations the engagement head predicts the watched fraction of the item's length
        expected = torch.sigmoid(scorer.engagement_head(pair).squeeze(-1)) * SPACE.duration[ids["candidate_items"]]
        torch.testing.assert_close(out["engagement"], expected, rtol=1e-5, atol=1e-5)


def test_split_heads_give_the_unsplit_gradients():
    split, unsplit = make(), make()
    obs = ids_obs(batch=16)
    split(obs).sum().backward()
    unsplit.click_head(unsplit.pair_features(obs)).sum().backward()
    for (name, a), (_, b) in zip(split.named_parameters(), unsplit.named_parameters(), strict=True):
        if b.grad is None:  # the engagement head: not in the click logits
            assert a.grad is None, name
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def _encoder_as_first_written(encoder, history, feedback, mask, time_left):
    """The attention user encoder as first written: token layer, recency, nn.MultiheadAttention."""
    batch, length = mask.shape
    tokens = encoder.token(torch.cat([history, feedback[..., :1], torch.log1p(feedback[..., 1:])], -1))
    tokens = (tokens + encoder.recency(torch.arange(length - 1, -1, -1))) * mask.unsqueeze(-1)
    keys = torch.cat([encoder.empty_token.expand(batch, 1, -1), tokens], dim=1)
    ignore = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), mask <= 0], dim=1)
    queries = encoder.queries.unsqueeze(0).expand(batch, -1, -1)
    pooled, _ = encoder.attention(queries, keys, keys, key_padding_mask=ignore, need_weights=False)
    return encoder.norm(encoder.summary(torch.cat([pooled.reshape(batch, -1), torch.log1p(time_left)], dim=-1)))


def test_attention_user_encoder_equals_multihead_attention_over_the_token_sequence():
    # values and gradients: the folded encoder (no keys, values projected after the
    # softmax) is the same function of the same parameters
    folded, reference = make(seed=4, item_features=()), make(seed=4, item_features=())
    obs = as_embeddings(ids_obs(batch=6))
    args = obs["history_feedback"], obs["history_mask"]
    got = folded.user_encoder(folded.item_tower(obs["history_items"]), *args, obs["time_left"], None)
    expected = _encoder_as_first_written(
        reference.user_encoder, reference.item_tower(obs["history_items"]), *args, obs["time_left"]
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    for (name, a), (_, b) in zip(folded.named_parameters(), reference.named_parameters(), strict=True):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_history_statistics_equal_the_per_part_formulas():
    # the statistics as first written (a loop over parts, decayed profile vectors),
    # against `statistics` (all parts' cosine poolings in one product), on random input
    match = Scorer(ScorerConfig(d_text=8, d_image=6, hidden_dim=16, item_features=())).history_match
    obs = as_embeddings(ids_obs(batch=8))
    candidates, history = obs["candidate_items"], obs["history_items"]
    feedback, mask = obs["history_feedback"], obs["history_mask"]
    clicked, skipped = feedback[..., 0] * mask, (1 - feedback[..., 0]) * mask
    engaged = torch.log1p(feedback[..., 1]) * mask
    weights = torch.stack([clicked, skipped, engaged], 1)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)
    recency = match.decays.unsqueeze(-1) ** torch.arange(4, -1, -1.0)
    decayed = (torch.stack([clicked, engaged], 1).unsqueeze(1) * recency[None, :, None, :]).flatten(1, 2)
    expected = []
    for start, end in match.parts:
        cand, past = candidates[..., start:end], history[..., start:end]
        cosine = torch.einsum("bkd,bhd->bkh", cand, past)
        expected.append(torch.einsum("bkh,bwh->bkw", cosine, weights))
        best = cosine.masked_fill((clicked <= 0).unsqueeze(1), float("-inf")).amax(-1)
        expected.append(torch.where(clicked.sum(-1, keepdim=True) > 0, best, torch.zeros_like(best)).unsqueeze(-1))
        expected.append(torch.bmm(cand, torch.bmm(decayed, past).transpose(1, 2)))
    counts = torch.log1p(torch.stack([clicked.sum(-1), skipped.sum(-1)], -1))
    expected.append(counts.unsqueeze(1).expand(-1, candidates.shape[1], -1))
    expected = torch.cat(expected, -1)
    torch.testing.assert_close(match.statistics(candidates, history, feedback, mask), expected, rtol=1e-5, atol=1e-6)
    # the fast path's column order with the first layer's columns reordered: same hidden layer
    pooled = match.pooled(match.cosines(candidates, history), feedback, mask)
    torch.testing.assert_close(match.hidden_from_pooled(pooled), match.hidden(expected), rtol=1e-5, atol=1e-5)


def test_cached_catalog_terms_equal_recomputed_and_refresh_after_an_optimizer_step():
    scorer = make()
    obs = ids_obs(batch=2)  # few lookups: with gradients the rows are computed one by one
    with torch.no_grad():
        first = scorer(obs)
        cached = scorer._catalog_cache[1]
        assert scorer(obs) is not first and scorer._catalog_cache[1] is cached  # hit
    recomputed = scorer(obs)  # with autograd: no cache, per-row tower
    torch.testing.assert_close(first, recomputed, rtol=0, atol=1e-6)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.1)
    recomputed.sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = scorer(obs)
        assert scorer._catalog_cache[1] is not cached  # the step changed the weights
        assert not torch.allclose(after, first)
        scorer._catalog_cache = None
        torch.testing.assert_close(after, scorer(obs), rtol=0, atol=0)


def test_decayed_history_statistics_equal_a_hand_computed_value():
    config = ScorerConfig(d_text=2, d_image=2, hidden_dim=4, num_heads=1, history_decays=(0.5,), item_features=())
    match = Scorer(config).history_match
    # H = 3 steps (oldest first, the first one padding), one candidate
    history = torch.tensor([[[9.0, 9.0, 9.0, 9.0], [1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.6, 0.8]]])
    feedback = torch.tensor([[[1.0, 50.0], [1.0, 3.0], [0.0, 0.0]]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    candidate = torch.tensor([[[0.6, 0.8, 1.0, 0.0]]])
    stats = match.statistics(candidate, history, feedback, mask)[0, 0]
    assert stats.shape == (match.num_statistics,) == ((4 + 2) * 2 + 2,)
    # text part: cos to step 1 (1 step back, clicked, 3 min) = 0.6, to step 2 (newest, skipped) = 0.8
    torch.testing.assert_close(stats[4], torch.tensor(0.5 * 1.0 * 0.6))  # clicked, decayed
    torch.testing.assert_close(stats[5], torch.tensor(0.5 * math.log1p(3.0) * 0.6))  # log1p(minutes)
    # image part: cos to step 1 = 0.0, to step 2 = 0.6; step 2 was skipped with 0 minutes
    torch.testing.assert_close(stats[10:12], torch.zeros(2))
    torch.testing.assert_close(stats[0], torch.tensor(0.6))  # clicked mean (unchanged statistic)


@pytest.mark.parametrize("decays", [(1.0,), (0.0,), (0.5, 0.5), ("0.5",), (True,)])
def test_invalid_history_decays_are_refused(decays):
    with pytest.raises(ValueError, match="history_decays"):
        ScorerConfig(d_text=8, d_image=6, history_decays=decays)


def test_history_decays_survive_a_json_round_trip():
    config = ScorerConfig(d_text=8, d_image=6, history_decays=(0.6, 0.9))
    again = ScorerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.history_decays == (0.6, 0.9)


def test_id_only_scorer_learns_one_embedding_per_item_and_reads_no_content():
    config = ScorerConfig(d_text=8, d_image=6, hidden_dim=16, num_heads=2, modality="id", item_features=())
    torch.manual_seed(0)
    scorer = Scorer(config, item_table=SPACE.fused)
    assert scorer.item_embedding.shape == SPACE.fused.shape
    obs = ids_obs()
    before = scorer(obs).detach()
    # content does not enter: another item table (same N) gives the same scores
    other = Scorer(config, item_table=torch.randn_like(SPACE.fused))
    other.load_state_dict(scorer.state_dict())
    torch.testing.assert_close(other(obs), before)
    # the embeddings are trained: a gradient step on one candidate's score moves its row only
    scorer(obs)[0, 0].backward()
    moved = scorer.item_embedding.grad.abs().sum(1) > 0
    assert moved[obs["candidate_items"][0, 0]]
    with torch.no_grad():  # cached catalog terms follow the embedding when it changes
        scorer.item_embedding.add_(0.5)
        assert not torch.equal(scorer(obs), before)
    vectors = {**obs, "candidate_items": SPACE.fused[obs["candidate_items"]],
               "history_items": SPACE.fused[obs["history_items"]]}
    with pytest.raises(ValueError, match="id-only scorer"):
        scorer(vectors)
    with pytest.raises(ValueError, match="modality='id' learns one embedding per catalog item"):
        Scorer(config)


# -- item metadata and the watched-fraction history (what the user model uses) ----------


def test_watched_fraction_statistic_at_the_users_decay_is_their_hidden_satiation():
    # Satiation users: satiation of item x = relu(<m, x>), m <- 0.8 m + watched * x / 2 after
    # each click. Rebuilt from the observation (history items, minutes / duration), the
    # scorer's watched-fraction statistic at rate 0.8 equals <m, x> while the history holds
    # every step so far.
    from envs.vector_env import RecVectorEnv

    space = ItemSpace.random(80, d_text=8, d_image=6, seed=5)
    env = RecVectorEnv(32, item_space=space, obs_mode="ids", device="cpu", user_model="satiation",
                       history_length=12, num_candidates=6)
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(8):
        obs, *_ = env.step(rng.integers(0, 6, size=32))
    scorer = Scorer.for_item_space(space, hidden_dim=8, num_heads=2, history_decays=(0.8,))
    match = scorer.history_match
    batch = {k: torch.as_tensor(v) for k, v in obs.items()}
    batch["history_items"] = batch["history_items"].long()
    batch["candidate_items"] = batch["candidate_items"].long()
    stats = match.statistics(space.fused[batch["candidate_items"]], space.fused[batch["history_items"]],
                             batch["history_feedback"], batch["history_mask"], scorer._watched(batch))
    per_part = 4 + 3  # clicked, skipped, engaged means, clicked max; clicked, minutes, watched at 0.8
    watched_column = [p * per_part + 6 for p in range(2)]
    rebuilt = stats[..., watched_column].sum(-1) / 2  # the two parts' dot products make the fused one
    memory = env.simulator.users.satiation  # (B, d) hidden
    hidden = torch.einsum("bd,bkd->bk", memory, space.fused[batch["candidate_items"]])
    assert (batch["history_mask"][:, 0] == 0).all()  # 8 steps < H = 12: every session is whole in the history
    assert (batch["history_feedback"][..., 0].sum(1) > 0).sum() > 20  # most users clicked something
    torch.testing.assert_close(rebuilt, hidden, rtol=1e-4, atol=1e-4)


def test_item_features_are_duration_and_log_popularity_and_travel_with_the_weights():
    from recsim_mm.item_features import item_feature_table

    scorer = make()
    table = scorer.item_feature_table
    assert table.shape == (SPACE.num_items, 3)
    torch.testing.assert_close(table[:, 0].exp(), SPACE.duration)  # durations read back exactly
    assert torch.equal(table[:, 1:], torch.zeros(SPACE.num_items, 2))  # no log: no popularity information
    other = Scorer(scorer.config, item_table=SPACE.fused, item_features=torch.zeros_like(table))
    other.load_state_dict(scorer.state_dict())
    assert torch.equal(other.item_feature_table, table)
    with pytest.raises(ValueError, match="item_features must be \\(N, F\\) = \\(60, 3\\)"):
        Scorer(scorer.config, item_table=SPACE.fused, item_features=torch.zeros(60, 2))
    with pytest.raises(ValueError, match="looked up by item row"):
        Scorer(scorer.config)
    with pytest.raises(ValueError, match="unknown"):
        ScorerConfig(d_text=8, d_image=6, item_features=("quality",))  # hidden: not a platform feature
    with pytest.raises(ValueError, match="duration 0.0; expected > 0 minutes"):
        broken = ItemSpace(SPACE.item_ids, SPACE.text, SPACE.image, SPACE.quality,
                           SPACE.duration.clone().index_fill_(0, torch.tensor([4]), 0.0))
        item_feature_table(broken)


def test_embeddings_mode_vector_off_the_item_table_is_refused_with_item_features():
    obs = as_embeddings(ids_obs())
    obs["candidate_items"] = obs["candidate_items"] + 0.5
    with pytest.raises(ValueError, match="candidate_items.*no row of the scorer's item table"):
        make()(obs)
