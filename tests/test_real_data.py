"""Real data: import of the public layouts, catalog join, ranker training on real logs,
calibration of a user population (with the ground-truth recovery check), the fidelity
report, the command line, experiments/run.py on real data, and bad input.

The layout files are tiny, written by the tests in each dataset's own format.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recsim_mm import ItemSpace
from recsim_mm.logging_policies import UniformPolicy, collect
from recsim_mm.ranker import TrainConfig, evaluate_ranker, train_ranker
from recsim_mm.real_data import (
    LogFormatError,
    UserPopulation,
    build_interaction_log,
    fit_population,
    layout,
    read_log_table,
    split_by_time,
    write_catalog,
)
from recsim_mm.real_data.__main__ import main as real_data_cli
from recsim_mm.real_data.fidelity import fidelity_report
from recsim_mm.scorer import ScorerConfig
from recsim_mm.simulator import Simulator
from recsim_mm.users.multimodal import MultimodalUser

GENRES = ["Comedy", "Drama", "Action", "Horror"]


def write_movielens(folder: Path, users: int = 12, movies: int = 30, seed: int = 0) -> tuple[Path, Path, Path]:
    """ratings.csv (sorted by user, then movie: not by time, as MovieLens ships it),
    movies.csv and a posters/ folder with a poster for half the movies."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["movieId,title,genres"]
    for m in range(1, movies + 1):
        lines.append(f'{m},"Movie {m}, Part {m % 3} ({1990 + m})",{GENRES[m % 4]}|{GENRES[(m + 1) % 4]}')
    (folder / "movies.csv").write_text("\n".join(lines) + "\n")
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, users + 1):
        for m in sorted(rng.choice(np.arange(1, movies + 1), size=8, replace=False).tolist()):
            rows.append(f"{u},{m},{rng.integers(1, 11) / 2:.1f},{1_000_000 + int(rng.integers(0, 3000))}")
    (folder / "ratings.csv").write_text("\n".join(rows) + "\n")
    posters = folder / "posters"
    posters.mkdir(exist_ok=True)
    for m in range(1, movies + 1, 2):
        Image.new("RGB", (8, 8), (m * 8 % 255, 40, 90)).save(posters / f"{m}.jpg")
    return folder / "ratings.csv", folder / "movies.csv", posters


def write_mind(folder: Path) -> tuple[Path, Path]:
    """behaviors.tsv and news.tsv, header-less, tab-separated, as MIND ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    news = [f"N{i}\t{['sports', 'news', 'tv'][i % 3]}\tsub\tTitle {i}\tAbstract of story {i}\thttp://x\t[]\t[]"
            for i in range(1, 21)]
    (folder / "news.tsv").write_text("\n".join(news) + "\n")
    behaviors = [
        "1\tU1\t11/15/2019 8:00:00 AM\tN1 N2\tN3-1 N4-0 N5-0 N6-0 N7-0 N8-0",
        "2\tU1\t11/15/2019 8:05:00 AM\tN1 N2\tN9-0 N10-1 N11-1",
        "3\tU2\t11/15/2019 9:00:00 AM\t\tN12-0 N13-0 N14-1",
        "4\tU2\t11/15/2019 11:00:00 AM\t\tN15-1 N16-0 N17-0",
        "5\tU3\t11/15/2019 9:30:00 AM\tN3\tN18-0 N19-0 N20-0 N3-1",
    ]
    (folder / "behaviors.tsv").write_text("\n".join(behaviors) + "\n")
    return folder / "behaviors.tsv", folder / "news.tsv"


def write_kuairand(folder: Path) -> tuple[Path, Path]:
    """log_standard.csv (one row per feed video; ms) and video_features_basic.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id,video_id,date,hourmin,time_ms,is_click,is_like,play_time_ms,duration_ms,tab"]
    t = 1_650_000_000_000
    for u in range(3):
        for step in range(6):
            v = (u * 5 + step) % 15
            click = int((u + step) % 3 == 0)
            rows.append(f"{u},{v},20220408,900,{t + 60_000 * step + u},{click},0,{30_000 * click},60000,1")
    (folder / "log_standard.csv").write_text("\n".join(rows) + "\n")
    videos = ["video_id,author_id,video_type,upload_dt,video_duration,tag"]
    videos += [f"{v},{v % 4},NORMAL,2022-01-01,{60000 + 1000 * v},{v % 5}" for v in range(15)]
    (folder / "video_features_basic.csv").write_text("\n".join(videos) + "\n")
    return folder / "log_standard.csv", folder / "video_features_basic.csv"


def random_space_for(item_ids, d: int = 8, seed: int = 0) -> ItemSpace:
    """A random item space over given ids (these tests are not about encoding)."""
    base = ItemSpace.random(len(item_ids), d, d, num_topics=4, seed=seed)
    return ItemSpace(item_ids=tuple(item_ids), text=base.text, image=base.image, quality=base.quality,
                     duration=base.duration, topics=base.topics)


# -- import and join -------------------------------------------------------------------------


def test_movielens_ratings_join_movies_and_posters_into_a_log_with_sampled_negatives(tmp_path):
    ratings, movies, posters = write_movielens(tmp_path / "ml")
    with pytest.warns(UserWarning, match="out of time order"):
        table = read_log_table(ratings, "movielens")
    assert len(table) == 96 and (np.diff(table.timestamp[table.user == "1"]) >= 0).all()
    with pytest.warns(UserWarning, match="15 item\\(s\\) have a missing image"):
        catalog = write_catalog(movies, "movielens", tmp_path / "ml" / "catalog.csv", posters, log=table,
                                missing_image="blank")
    assert len(catalog) == 30 and catalog[0].title.startswith("Movie 1, Part 1")
    assert catalog[0].description == "Drama, Action" and catalog.topics is not None
    assert catalog[0].image_path == (posters / "1.jpg").resolve() and catalog[1].image is not None
    log, report = build_interaction_log(table, catalog.item_ids, slate_size=4, num_candidates=6,
                                        durations=catalog.duration)
    assert (len(log), log.slate_size, log.num_candidates) == (96, 4, 6)
    assert report.click_source == "rating >= 4" and report.sampled_negatives == 96 * 3
    assert report.clicks == int((table.rating >= 4).sum()) == int((log.clicked_slot >= 0).sum())
    shown = np.take_along_axis(log.candidate_items, log.shown, axis=1)
    ids = np.asarray(catalog.item_ids)
    # each record shows its rated movie; clicked records click exactly it
    assert all(table.item[i] in ids[shown[i]] for i in range(len(log)))
    clicked = log.clicked_slot >= 0
    assert (ids[shown[clicked, log.clicked_slot[clicked]]] == table.item[clicked]).all()
    # a sampled negative is never a movie the user rated
    for i in range(len(log)):
        rated = set(table.item[table.user == log.user_id[i]])
        negatives = set(ids[shown[i]]) - {table.item[i]}
        assert not negatives & rated
    assert log.history_mask.sum(1).max() > 0 and (log.propensity == 1.0).all()


def test_mind_impressions_expand_and_split_multi_click_impressions(tmp_path):
    behaviors, news = write_mind(tmp_path / "mind")
    table = read_log_table(behaviors, "mind")
    assert len(table) == 6 + 3 + 3 + 3 + 4 and table.impression is not None
    catalog = write_catalog(news, "mind", tmp_path / "mind" / "catalog.csv", missing_image="blank")
    assert catalog[0].text == "Title 1. Abstract of story 1" and len(catalog.topic_names) == 3
    log, report = build_interaction_log(table, catalog.item_ids, slate_size=3)
    # 5 impressions, one with two clicks -> 6 records; the 6-item impression is subsampled
    assert len(log) == 6 and report.multi_click_impressions == 1 and report.impressions_truncated >= 1
    assert report.sampled_negatives == 2 and report.clicks == 6  # the split records have 2 items each
    # U2's impressions are 2 h apart: two sessions; U1's 5 min apart: one
    assert report.sessions == 4
    u1 = log.user_id == "U1"
    assert log.step[u1].tolist() == [0, 1, 1]
    ids = np.asarray(catalog.item_ids)
    shown = ids[np.take_along_axis(log.candidate_items, log.shown, axis=1)]
    assert {shown[i, log.clicked_slot[i]] for i in np.flatnonzero(u1)} == {"N3", "N10", "N11"}


def test_kuairand_reads_clicks_and_watch_time_in_minutes(tmp_path):
    log_file, videos = write_kuairand(tmp_path / "kr")
    table = read_log_table(log_file, "kuairand")
    assert table.watch_time.max() == pytest.approx(0.5) and table.duration.max() == pytest.approx(1.0)
    import pyarrow.csv
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.csv.read_csv(log_file), tmp_path / "log.parquet")  # typed columns
    from_parquet = read_log_table(tmp_path / "log.parquet", "kuairand")
    assert (from_parquet.item == table.item).all() and (from_parquet.click == table.click).all()
    assert np.allclose(from_parquet.timestamp, table.timestamp)
    catalog = write_catalog(videos, "kuairand", tmp_path / "kr" / "catalog.csv", missing_image="blank")
    assert catalog[3].duration == pytest.approx(63000 / 60000)
    log, report = build_interaction_log(table, catalog.item_ids, slate_size=2, durations=catalog.duration)
    assert report.click_source == "click column" and report.engagement_source.startswith("watch_time")
    assert np.allclose(log.engagement[log.clicked_slot >= 0], 0.5)


def test_ranker_trains_on_an_imported_log_and_scores_held_out_users(tmp_path):
    ratings, movies, posters = write_movielens(tmp_path / "ml", users=40, movies=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = read_log_table(ratings, "movielens")
        catalog = write_catalog(movies, "movielens", tmp_path / "catalog.csv", posters, missing_image="blank")
    space = random_space_for(catalog.item_ids)
    log, _ = build_interaction_log(table, space.item_ids, slate_size=4, durations=catalog.duration)
    log.save(tmp_path / "train.parquet")
    log = type(log).load(tmp_path / "train.parquet", space)  # through the file format
    train, test = log.split_by_user(0.25)
    result = train_ranker(train, space, ScorerConfig(d_text=8, d_image=8, hidden_dim=8, num_heads=2,
                                                     use_time_left=False),
                          TrainConfig(max_epochs=2, device="cpu"))
    metrics = evaluate_ranker(result.ranker, test)
    assert 0.0 <= metrics["auc"] <= 1.0 and np.isfinite(metrics["log_loss"])
    assert len(result.history) >= 1


# -- calibration: the ground-truth check -------------------------------------------------------

#: The known population of the recovery check: the default user without satiation or drift
#: (what the estimator assumes), modality weights ~ Beta(2, 5) (mean 0.286, sd 0.160).
TRUE_PARAMS = dict(modality_beta=(2.0, 5.0), drift_rate=0.0, satiation_strength=0.0, patience=3,
                   quit_probability=0.05, time_budget=10_000.0, time_budget_spread=0.0,
                   choice_temperature=0.1, no_click_utility=0.4)
RECOVERY_STEPS = 40


@pytest.fixture(scope="module")
def simulated_truth():
    """400 users of the known population, logged for up to 40 steps under uniform slates."""
    space = ItemSpace.random(300, 16, 16, num_topics=8, seed=0)
    users = MultimodalUser(space, 400, **TRUE_PARAMS)
    sim = Simulator(space, users, num_candidates=10, slate_size=5, obs_mode="ids", max_steps=RECOVERY_STEPS)
    log = collect(sim, UniformPolicy(), 400, RECOVERY_STEPS, seed=0)
    # no drift: each row still holds the interests and weight that made user f"s0-u{row}"'s clicks
    return space, log, users.modality_weight.clone()


@pytest.fixture(scope="module")
def recovered(simulated_truth):
    space, log, _ = simulated_truth
    with pytest.warns(UserWarning, match="never clicked"):
        return fit_population(log, space, max_session_steps=RECOVERY_STEPS)


def test_population_fitted_to_simulated_logs_recovers_modality_weights_and_click_rate(simulated_truth, recovered):
    space, log, true_weight = simulated_truth
    population = recovered
    true_mean, true_sd = float(true_weight.mean()), float(true_weight.std())
    mean, sd = population.prior_moments()
    # tolerances of docs/real_data.md: mean and sd of the weights within 0.06, click rate within 0.05
    assert abs(mean - true_mean) <= 0.06 and abs(sd - true_sd) <= 0.06, (mean, sd, true_mean, true_sd)
    rows = torch.tensor([int(u.split("-u")[1]) for u in population.user_ids])
    per_user = np.corrcoef(population.modality_weight.numpy(), true_weight[rows].numpy())[0, 1]
    assert per_user > 0.4
    assert population.params["patience"] == TRUE_PARAMS["patience"]
    assert abs(population.params["quit_probability"] - TRUE_PARAMS["quit_probability"]) <= 0.02
    report = fidelity_report(log, population, space, seed=1)
    click = report.metrics["click rate"]
    assert abs(click["calibrated"] - click["real"]) <= 0.05, click
    length = report.metrics["session length, mean"]
    assert abs(length["calibrated"] - length["real"]) <= 0.25 * length["real"], length


def test_fidelity_report_ranks_held_out_clicks_better_calibrated_than_default(simulated_truth):
    space, log, _ = simulated_truth
    early, late = split_by_time(log, 0.25)
    assert set(late.user_id) <= set(early.user_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        population = fit_population(early, space, max_session_steps=RECOVERY_STEPS)
    report = fidelity_report(early, population, space, held_out=late, max_sessions=200)
    assert set(report.metrics) >= {"click rate", "session length, mean", "clicks per item, Gini",
                                   "topic mix of clicks, TV distance to real", "text coherence of clicks"}
    assert report.metrics["topic mix of clicks, TV distance to real"]["real"] == 0.0
    calibrated, default = report.auc["calibrated (fitted interests and modality weight)"], \
        report.auc["uncalibrated default user"]
    assert calibrated > 0.75 and calibrated > default + 0.15, report.auc
    text = report.to_markdown()
    assert "| click rate |" in text and "held-out click AUC" in text


def test_environment_users_are_drawn_from_a_population_file(simulated_truth, recovered, tmp_path):
    import gymnasium

    import envs  # noqa: F401

    space, _, _ = simulated_truth
    recovered.save(tmp_path / "population.pt")
    env = gymnasium.make("recsim_mm/Myopic-v0", item_space=space,
                         user_params={"population": str(tmp_path / "population.pt"), "quit_probability": 0.2})
    env.reset(seed=3)
    users = env.unwrapped.simulator.users
    assert users.config.choice_temperature == pytest.approx(recovered.params["choice_temperature"])
    assert users.config.patience == recovered.params["patience"]
    assert users.config.quit_probability == 0.2  # an explicit parameter wins over the fitted one
    interest = users.interest[0]
    fitted = torch.cat([recovered.text_interest, recovered.image_interest], dim=1)
    assert torch.isclose(fitted, interest).all(1).any()  # the user is one of the fitted users
    other = ItemSpace.random(300, 16, 16, num_topics=8, seed=1)
    with pytest.raises(ValueError, match="fitted in item space .* fit it again"):
        gymnasium.make("recsim_mm/Myopic-v0", item_space=other,
                       user_params={"population": str(tmp_path / "population.pt")})
    draws = MultimodalUser(space, 4000, population=recovered)
    draws.sample(torch.arange(4000), torch.Generator().manual_seed(0))
    assert abs(float(draws.modality_weight.mean()) - recovered.prior_moments()[0]) < 0.02
    assert UserPopulation.load(tmp_path / "population.pt", space).num_users == recovered.num_users


# -- command line and experiments/run.py ---------------------------------------------------------


def test_command_line_imports_movielens_and_calibrates_with_a_given_item_space(tmp_path, capsys):
    ratings, movies, posters = write_movielens(tmp_path / "ml", users=30, movies=30)
    out = tmp_path / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert real_data_cli(["import", "--layout", "movielens", "--log", str(ratings), "--items", str(movies),
                              "--images", str(posters), "--missing-image", "blank", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"catalog.csv", "train.parquet", "test.parquet", "import.json"}
    from recsim_mm.catalog import load_catalog

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        space = random_space_for(load_catalog(out / "catalog.csv", missing_image="blank").item_ids)
    space.save(tmp_path / "item_space.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert real_data_cli(["calibrate", "--data", str(out), "--item-space", str(tmp_path / "item_space.pt")]) == 0
    assert (out / "population.pt").is_file() and "| click rate |" in (out / "fidelity.md").read_text()
    assert real_data_cli(["import", "--layout", "mind", "--log", str(ratings), "--items", str(movies),
                          "--out", str(tmp_path / "x")]) == 2
    assert "mapping 'mind' expects a file without header of 5 columns separated by '\\t'" in capsys.readouterr().err


@pytest.mark.slow
def test_run_py_compares_strategies_on_a_real_catalog_real_logs_and_a_fitted_population(tmp_path):
    from test_experiments import TINY

    from experiments.run import main
    from recsim_mm.catalog import load_catalog
    from recsim_mm.encoders import ImageEncoder, TextEncoder
    from recsim_mm.logs import InteractionLog
    from recsim_mm.pipeline import build_item_space

    ratings, movies, posters = write_movielens(tmp_path / "ml", users=40, movies=24)
    data = tmp_path / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert real_data_cli(["import", "--layout", "movielens", "--log", str(ratings), "--items", str(movies),
                              "--images", str(posters), "--missing-image", "blank", "--slate-size", "4",
                              "--num-candidates", "10", "--out", str(data)]) == 0
        catalog = load_catalog(data / "catalog.csv", missing_image="blank")
    # the item space run.py builds for catalog.path with these encoder keys
    space = build_item_space(catalog, TextEncoder(device="cpu"), ImageEncoder(device="cpu", image_size=128),
                             8, 8, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_population(InteractionLog.load(data / "train.parquet", space), space).save(data / "population.pt")
    args = [*TINY, "seeds=[0]", f"catalog.path={data / 'catalog.csv'}", "catalog.missing_image=blank",
            "encoders.d_text=8", "encoders.d_image=8", "env.id=recsim_mm/Myopic-v0", "env.num_candidates=10",
            f"logging.path={data}", f"user_population={data / 'population.pt'}", "scorer.use_time_left=false",
            "agents=[random,popular,greedy]", f"results_dir={tmp_path / 'results'}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = main(args)
    summary = (run_dir / "summary.md").read_text()
    assert "catalog: 24 items" in summary and "greedy" in summary
    logs = next((tmp_path / "results" / ".cache").glob("logs-*"))
    assert (logs / "train.parquet").read_bytes() == (data / "train.parquet").read_bytes()
    from experiments.config import ConfigError

    with pytest.raises(ConfigError, match="scorer.use_time_left"):
        main([a for a in args if a != "scorer.use_time_left=false"])
    with pytest.raises(ConfigError, match="user_population"):
        main([*args, f"user_population={tmp_path / 'none.pt'}"])


# -- bad input ---------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_or_misnamed_column_names_the_column_and_the_mapping(tmp_path):
    ratings = write(tmp_path / "ratings.csv", "userId,movie,rating,timestamp\n1,2,4.0,10\n")
    with pytest.raises(LogFormatError, match=r"column 'movieId' \(the 'item' column of mapping 'movielens'\) "
                                             r"not found; the file's columns are \['userId', 'movie'"):
        read_log_table(ratings, "movielens")
    movies = write(tmp_path / "movies.csv", "movieId,name,genres\n2,x,Drama\n")
    with pytest.raises(LogFormatError, match="column 'title' .*item mapping 'movielens'"):
        write_catalog(movies, "movielens", tmp_path / "c.csv")
    mapping = layout("movielens")[0].replace(columns={"click": "clicked"})
    with pytest.raises(LogFormatError, match="column 'clicked'"):
        read_log_table(write(tmp_path / "r2.csv", "userId,movieId,rating,timestamp\n1,2,4,10\n"), mapping)


@pytest.mark.parametrize("body,message", [
    ("1,2,x,3,10\n", r"row 2: column 'is_click' \('click' in mapping 'kuairand'\) has 'x'; expected a finite number"),
    ("1,2,2,3,10\n", r"row 2: column 'is_click' .* has '2'; expected 0 or 1"),
    ("1,2,1,abc,10\n", r"row 2: column 'play_time_ms' .* has 'abc'"),
    (",2,1,3,10\n", r"row 2: column 'user_id' .* is empty"),
    ("1,2,1,3,\n", r"row 2: column 'time_ms' .* has ''"),
])
def test_non_numeric_or_invalid_cells_name_row_column_and_value(tmp_path, body, message):
    path = write(tmp_path / "log.csv", "user_id,video_id,is_click,play_time_ms,time_ms,duration_ms\n"
                 + body.rstrip("\n") + ",1000\n")
    with pytest.raises(LogFormatError, match=message):
        read_log_table(path, "kuairand")


def test_non_numeric_rating_is_an_error(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,good,10\n")
    with pytest.raises(LogFormatError, match="column 'rating' .* has 'good'"):
        read_log_table(path, "movielens")


def test_items_absent_from_the_catalog_are_counted_and_dropped_only_on_request(tmp_path):
    path = write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n1,1,4,10\n1,99,4,11\n2,98,5,12\n1,2,3,13\n")
    table = read_log_table(path, "movielens")
    ids = [str(i) for i in range(1, 11)]
    with pytest.raises(LogFormatError, match=r"2 event\(s\) refer to 2 item\(s\) absent from the catalog .*'98', "
                                             r"'99'.*unknown_items='drop'"):
        build_interaction_log(table, ids, slate_size=2)
    with pytest.warns(UserWarning, match=r"dropped 2 event\(s\) of 2 item\(s\) .* 1 user\(s\) had no other event"):
        log, report = build_interaction_log(table, ids, slate_size=2, unknown_items="drop")
    assert len(log) == 2 and report.unknown_item_events == 2 and report.users_without_events == 1


def test_duplicate_and_unordered_events_are_an_error_or_a_warned_choice(tmp_path):
    path = write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n1,1,4,10\n1,1,4,10\n1,2,3,5\n")
    with pytest.raises(LogFormatError, match=r"row 3 repeats row 2 .*duplicates='drop'"):
        read_log_table(path, "movielens")
    with pytest.warns(UserWarning, match=r"dropped 1 duplicate"):
        with pytest.raises(LogFormatError, match=r"row 4 \(user '1'\) is earlier .*unordered='sort'"):
            read_log_table(path, "movielens", duplicates="drop", unordered="error")
    with pytest.warns(UserWarning) as record:
        table = read_log_table(path, "movielens", duplicates="drop")
    assert any("out of time order" in str(w.message) for w in record)
    assert table.item.tolist() == ["2", "1"]


def test_empty_impression_list_and_users_without_clicks_are_reported(tmp_path, simulated_truth):
    path = write(tmp_path / "behaviors.tsv", "1\tU1\t11/15/2019 8:00:00 AM\t\t\n")
    with pytest.raises(LogFormatError, match="column 'impressions' .* is empty"):
        read_log_table(path, "mind")
    bad_date = write(tmp_path / "b2.tsv", "1\tU1\tyesterday\t\tN1-1\n")
    with pytest.raises(LogFormatError, match="has 'yesterday'; expected a date like"):
        read_log_table(bad_date, "mind")
    space, log, _ = simulated_truth
    no_clicks = log.select(log.clicked_slot < 0)
    with pytest.raises(ValueError, match="every record is a non-click"):
        fit_population(no_clicks, space)
