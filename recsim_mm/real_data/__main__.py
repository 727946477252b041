"""Command line: import a real log, and fit a user population to it (docs/real_data.md).

    python -m recsim_mm.real_data import --layout movielens --log ratings.csv --items movies.csv \\
        --images posters/ --out data/ml
    python -m recsim_mm.real_data calibrate --data data/ml

``import`` writes ``<out>/catalog.csv`` (the existing catalog format), ``train.parquet``
and ``test.parquet`` (`InteractionLog` files, split by user) and ``import.json`` (the
`ImportReport`). ``calibrate`` encodes the catalog with the same encoders and sizes
as ``experiments/run.py``'s defaults (or reads ``--item-space``), fits the population
on ``train.parquet`` and writes ``population.pt``, ``fidelity.md`` and ``fidelity.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsim_mm.files import atomic_write, write_json


def import_command(args: argparse.Namespace) -> None:
    """``import``: log + item file + images -> catalog.csv, train/test.parquet, import.json."""
    from recsim_mm.real_data import build_interaction_log, layout, read_log_table, write_catalog

    log_mapping, item_mapping = layout(args.layout)
    if args.session_gap is not None:
        log_mapping = log_mapping.replace(session_gap=args.session_gap if args.session_gap > 0 else None)
    out = Path(args.out)
    table = read_log_table(args.log, log_mapping, unordered=args.unordered, duplicates=args.duplicates)
    catalog = write_catalog(args.items, item_mapping, out / "catalog.csv", args.images, log=table,
                            only_logged=args.only_logged, missing_image=args.missing_image)
    log, report = build_interaction_log(
        table, catalog.item_ids, slate_size=args.slate_size, num_candidates=args.num_candidates,
        history_length=args.history_length, durations=catalog.duration, unknown_items=args.unknown_items,
        seed=args.seed)
    train, test = log.split_by_user(args.test_users, seed=args.seed)
    train.save(out / "train.parquet")
    test.save(out / "test.parquet")
    write_json(out / "import.json", {**report.to_dict(), "train_records": len(train), "test_records": len(test),
                                     "catalog_items": len(catalog), "layout": args.layout})
    print(f"{report.records} records of {report.users} users ({report.clicks} clicks, {report.sampled_negatives} "
          f"sampled negatives); {len(catalog)} catalog items -> {out}")


def calibrate_command(args: argparse.Namespace) -> None:
    """``calibrate``: fit the population on train.parquet; write population.pt and the fidelity report."""
    from recsim_mm.catalog import load_catalog
    from recsim_mm.item_space import ItemSpace
    from recsim_mm.logs import InteractionLog
    from recsim_mm.real_data import fit_population, split_by_time
    from recsim_mm.real_data.fidelity import fidelity_report, held_out_auc

    data = Path(args.data)
    if args.item_space is not None:
        item_space = ItemSpace.load(args.item_space)
    else:
        from recsim_mm.encoders import ImageEncoder, TextEncoder
        from recsim_mm.pipeline import build_item_space

        catalog = load_catalog(data / "catalog.csv", missing_image=args.missing_image)
        item_space = build_item_space(
            catalog, TextEncoder(model=args.text, device="cpu"),
            ImageEncoder(model=args.image, device="cpu", image_size=args.image_size),
            args.d_text, args.d_image, args.alignment, device="cpu")
    log = InteractionLog.load(data / "train.parquet", item_space)
    population = fit_population(log, item_space)
    out = Path(args.out) if args.out is not None else data / "population.pt"
    population.save(out)
    early, late = split_by_time(log, 0.2)
    report = fidelity_report(log, population, item_space, seed=args.seed)
    # the AUCs rank held-out clicks, so they come from a population fitted without them
    report.auc = held_out_auc(late, fit_population(early, item_space), item_space, seed=args.seed)
    text = report.to_markdown()
    atomic_write(out.with_name("fidelity.md"), lambda f: f.write(text.encode()))
    write_json(out.with_name("fidelity.json"), {**report.to_dict(), "params": population.params,
                                                 "summary": population.summary})
    print(text)
    print(f"population of {population.num_users} users -> {out}")


def parser() -> argparse.ArgumentParser:
    """The command-line parser (``import`` and ``calibrate``)."""
    from recsim_mm.real_data.tables import LAYOUTS

    p = argparse.ArgumentParser(prog="python -m recsim_mm.real_data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="log + item file (+ images) -> catalog.csv, train/test.parquet")
    imp.add_argument("--layout", required=True, choices=sorted(LAYOUTS))
    imp.add_argument("--log", required=True, help="ratings.csv / behaviors.tsv / log_standard_*.csv ...")
    imp.add_argument("--items", required=True, help="movies.csv / news.tsv / video features ...")
    imp.add_argument("--images", default=None, help="folder of <item_id>.jpg|jpeg|png|webp images")
    imp.add_argument("--missing-image", default="error", choices=["error", "blank"])
    imp.add_argument("--only-logged", action="store_true", help="catalog: only items the log shows")
    imp.add_argument("--unknown-items", default="error", choices=["error", "drop"])
    imp.add_argument("--duplicates", default="error", choices=["error", "drop"])
    imp.add_argument("--unordered", default="sort", choices=["sort", "error"])
    imp.add_argument("--session-gap", type=float, default=None, help="seconds; 0: one session per user")
    imp.add_argument("--slate-size", type=int, default=5)
    imp.add_argument("--num-candidates", type=int, default=None)
    imp.add_argument("--history-length", type=int, default=10)
    imp.add_argument("--test-users", type=float, default=0.2, help="share of users in test.parquet")
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--out", required=True)
    imp.set_defaults(run=import_command)
    cal = sub.add_parser("calibrate", help="fit a user population to <data>/train.parquet")
    cal.add_argument("--data", required=True, help="the folder `import` wrote")
    cal.add_argument("--out", default=None, help="population file (default <data>/population.pt)")
    cal.add_argument("--item-space", default=None, help="an item_space.pt to use instead of encoding")
    cal.add_argument("--missing-image", default="error", choices=["error", "blank"])
    cal.add_argument("--text", default="default")
    cal.add_argument("--image", default="default")
    cal.add_argument("--image-size", type=int, default=128)
    cal.add_argument("--d-text", type=int, default=32)
    cal.add_argument("--d-image", type=int, default=32)
    cal.add_argument("--alignment", default="pca", choices=["pca", "contrastive"])
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(run=calibrate_command)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input prints one line and returns 2."""
    from recsim_mm.catalog import CatalogError
    from recsim_mm.real_data.tables import LogFormatError

    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (LogFormatError, CatalogError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
