"""``protloc split``: multilabel-stratified K folds or a holdout, groups/near duplicates kept together."""

from __future__ import annotations

import sys

from protloc.cli.main import add_data_args, new_command, table_from_args
from protloc.cli.options import OutFile, declare_paths, fraction, integer, nonneg_int, seed


def register(sub) -> None:
    p = new_command(sub, "split", help="make deterministic stratified folds (or a holdout) -> splits.csv",
                    example="protloc split --csv train.csv --images train/ --folds 5 --seed 0 --out splits.csv")
    add_data_args(p)
    g = p.add_argument_group("split")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--folds", default=None, help="number of folds (default 5)",
                   type=integer(min=2, expected="2 or more folds", fix="use --holdout FRACTION for one "
                                "validation set (e.g. --holdout 0.2), or --folds 2 or more"))
    m.add_argument("--holdout", type=fraction, default=None, help="hold out this fraction as one validation set")
    g.add_argument("--seed", type=seed, default=0, help="random seed (same seed, same split)")
    g.add_argument("--group-col", default=None, help="CSV column whose value keeps images in one fold")
    g.add_argument("--no-near-dup", action="store_true",
                   help="do not hash images to keep near duplicates in one fold (faster)")
    g.add_argument("--rotations", action="store_true",
                   help="also keep rotated/mirrored copies together (slower near-duplicate search)")
    g.add_argument("--workers", type=nonneg_int, default=0, help="decoding processes, 0 = min(4, CPUs)")
    g.add_argument("--out", default="splits.csv", help="output CSV (Image,fold)")
    declare_paths(p, OutFile("out"))
    p.set_defaults(func=run)


def _group_values(args, table):
    from protloc.core.errors import InputError
    from protloc.data.table import read_csv_table

    if table.csv_path is None:
        raise InputError("--group-col", expected="a CSV (--csv) holding the column",
                         got="an image folder only", fix="pass --csv or drop --group-col")
    df, id_name, _ = read_csv_table(table.csv_path, id_col=args.id_col)
    if args.group_col not in df.columns:
        raise InputError(f"{table.csv_path} --group-col", expected=f"a column {args.group_col!r}",
                         got=f"columns {[c for c in df.columns if c != '_line']}",
                         fix="pass an existing column name")
    by_id = dict(zip(df[id_name].str.strip(), df[args.group_col]))
    return [by_id.get(i, "") for i in table.ids]


def run(args) -> int:
    import numpy as np
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from protloc.core.atomic import write_csv
    from protloc.data.split import fold_class_counts, make_folds

    table = table_from_args(args)
    for note in (table.notes if table is not None else []):  # never drop rows silently
        print(f"note: {note}", file=sys.stderr)
    groups = _group_values(args, table) if args.group_col else None
    n_folds = args.folds if args.folds is not None else 5
    linked = []
    if not args.no_near_dup:
        from protloc.data.validate import near_duplicate_groups

        problems: list = []
        linked = near_duplicate_groups(table, progress=True, workers=args.workers or None, problems=problems,
                                       rotations=args.rotations)
        for i, msg in problems[:20]:
            print(f"warning: {table.where(i)}: not hashed ({msg}); it is split on its own. "
                  "Run protloc validate for details", file=sys.stderr)
        if len(problems) > 20:
            print(f"warning: ... and {len(problems) - 20} more unreadable images", file=sys.stderr)
        if linked:
            print(f"{len(linked)} groups of duplicate/near-duplicate images "
                  f"({sum(map(len, linked))} images) are kept in one fold each", file=sys.stderr)
    folds = make_folds(table, n_folds, seed=args.seed, groups=groups, near_dup=False, linked=linked,
                       holdout=args.holdout, progress=True, workers=args.workers or None)
    write_csv(args.out, pd.DataFrame({"Image": table.ids, "fold": folds}))
    console = Console(width=None if sys.stdout.isatty() else 160)
    keys = sorted(set(folds.tolist()))
    names = {k: ("holdout" if k == 0 else "train") if args.holdout is not None else f"fold {k}" for k in keys}
    t = Table(title=f"{len(table)} images -> {args.out} (seed {args.seed})")
    t.add_column("class")
    for k in keys:
        t.add_column(names[k], justify="right")
    if table.labeled:
        counts = fold_class_counts(table.y(), folds)
        for c, cname in enumerate(table.schema.classes):
            t.add_row(f"{c} {cname}", *[str(int(counts[k][c])) for k in keys])
    t.add_row("[bold]images[/bold]", *[str(int(np.sum(folds == k))) for k in keys])
    console.print(t)
    return 0
