"""``protloc explore --data DIR --out explore.html``: one HTML page describing a dataset."""

from __future__ import annotations


from protloc.cli.main import add_data_args, new_command
from protloc.cli.options import InDir, InFile, OutFile, declare_paths, nonneg_int, positive_int, seed


def register(sub) -> None:
    p = new_command(sub, "explore", help="data exploration report (one self-contained HTML file)",
                    example="protloc explore --csv train.csv --images train/ --test-csv test.csv "
                            "--test-images test/ --out explore.html",
                    description="Write one HTML file (opens offline) describing a dataset: class "
                                "frequencies, labels per image, label co-occurrence and correlation, "
                                "frequent label combinations, sample images per class (composite and "
                                "each channel), channel intensity histograms, file formats / sizes / "
                                "bit depths, and the duplicate and train/test leak findings of "
                                "`protloc validate`. Label statistics use every row; images are read for "
                                "a random sample (--sample). With --data DIR, DIR/test/ is used as the "
                                "test set when it exists.")
    add_data_args(p)
    g = p.add_argument_group("explore")
    g.add_argument("--out", required=True, help="HTML file to write")
    g.add_argument("--test-csv", default=None, help="test-set CSV (ids; labels optional)")
    g.add_argument("--test-images", default=None, help="test-set image folder (train/test leak check)")
    g.add_argument("--sample", type=positive_int, default=2000, help="images read for histograms (random sample)")
    g.add_argument("--per-class", type=positive_int, default=3, help="gallery images per class")
    g.add_argument("--seed", type=seed, default=0, help="seed of the random samples")
    g.add_argument("--no-validate", action="store_true",
                   help="skip the duplicate / leak check (it reads every image once)")
    g.add_argument("--workers", type=nonneg_int, default=None, help="decoding processes (default: up to 4)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    declare_paths(p, InFile("test_csv", "CSV file"), InDir("test_images", "image folder"), OutFile("out"))
    p.set_defaults(func=run)


def run(args) -> int:
    from protloc.cli.main import default_test_split, table_from_args
    from protloc.core.errors import InputError
    from protloc.reports.explore import explore
    from protloc.data.table import load_table

    default_test_split(args)
    table = table_from_args(args, strict=False)
    test = None
    if args.test_csv or args.test_images:
        if not args.test_images:
            raise InputError("--test-csv", expected="--test-images with it", got="no --test-images",
                             fix="pass --test-images DIR")
        test = load_table(args.test_csv, args.test_images, fmt=table.fmt,
                          channels=",".join(map(str, table.channels)), schema=table.schema,
                          id_col=args.id_col, strict=False)
    out = explore(table, out=args.out, test_table=test, sample=args.sample, seed=args.seed,
                  progress=not args.no_progress, per_class=args.per_class, validate=not args.no_validate,
                  workers=args.workers)
    print(f"wrote {out}")
    return 0
