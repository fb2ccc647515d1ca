"""``protloc validate``: check every row and file in one pass; report all problems."""

from __future__ import annotations

import sys

from protloc.cli.main import add_data_args, new_command
from protloc.cli.options import InDir, InFile, OutFile, declare_paths, integer, nonneg_int

#: rows shown per finding code in the terminal table (the JSON has all of them).
MAX_ROWS_PER_CODE = 25
_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def register(sub) -> None:
    p = new_command(sub, "validate", help="check a dataset: files, labels, duplicates, train/test leaks",
                    example="protloc validate --csv train.csv --images train/ --test-csv test.csv "
                            "--test-images test/ --json report.json")
    add_data_args(p)
    g = p.add_argument_group("validate")
    g.add_argument("--test-csv", default=None, help="test-set CSV (ids; labels optional)")
    g.add_argument("--test-images", default=None, help="test-set image folder (checks train/test leaks)")
    g.add_argument("--json", default=None, help="also write every finding to this JSON file")
    g.add_argument("--no-near-dup", action="store_true", help="skip the perceptual-hash near-duplicate search")
    g.add_argument("--rotations", action="store_true",
                   help="also find rotated/mirrored copies (8 hashes per image, slower search)")
    g.add_argument("--hamming", default=12,
                   type=integer(min=0, max=40, expected="0 to 40 bits (of 128)", fix="e.g. --hamming 12"),
                   help="near-duplicate threshold: differing bits of the 128-bit perceptual hash")
    g.add_argument("--workers", type=nonneg_int, default=0, help="decoding processes, 0 = min(4, CPUs)")
    declare_paths(p, InFile("test_csv", "CSV file"), InDir("test_images", "image folder"), OutFile("json"))
    p.set_defaults(func=run)


def render(report, *, console=None, max_rows: int = MAX_ROWS_PER_CODE) -> None:
    """Print the findings as a rich table (at most ``max_rows`` per code) and a summary."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    n = ", ".join(f"{v} {k}" for k, v in report.n_images.items())
    if not report.findings:
        console.print(f"[green]OK[/green]: {n} images checked, no problems found.")
        return
    table = Table(title=f"protloc validate: {n} images", show_lines=False)
    for col in ("severity", "code", "where", "problem", "fix"):
        table.add_column(col, overflow="fold")
    shown: dict[str, int] = {}
    hidden: dict[str, int] = {}
    for f in report.findings:
        if shown.get(f.code, 0) >= max_rows:
            hidden[f.code] = hidden.get(f.code, 0) + 1
            continue
        shown[f.code] = shown.get(f.code, 0) + 1
        table.add_row(f"[{_STYLE[f.severity]}]{f.severity}[/]", f.code, f.where, f.message, f.fix)
    for code, k in hidden.items():
        table.add_row("", code, f"... {k} more", "not shown here", "use --json FILE for the full list")
    console.print(table)
    counts = ", ".join(f"{v} x {k.split(':')[1]}" for k, v in sorted(report.counts().items()))
    console.print(f"{len(report.errors)} errors, {len(report.warnings)} warnings ({counts}).")


def run(args) -> int:
    from protloc.core.atomic import write_json
    from protloc.data.validate import validate_dataset

    from protloc.cli.main import default_test_split

    default_test_split(args)
    kw = dict(data=args.data, fmt=args.format, channels=args.channels, schema=args.schema,
              id_col=args.id_col, label_col=args.label_col, from_schema=args.from_schema)
    report = validate_dataset(args.csv, args.images, test_table=args.test_csv, test_images=args.test_images,
                              near_dup=not args.no_near_dup, rotations=args.rotations, progress=True, workers=args.workers or None,
                              threshold=args.hamming, **kw)
    render(report)
    if args.json:
        write_json(args.json, report.to_dict())
        print(f"wrote {args.json}")
    errors = report.errors
    for f in errors[:20]:
        print(f"error: {f.line()}", file=sys.stderr)
    if len(errors) > 20:
        print(f"error: ... and {len(errors) - 20} more errors (see the table or --json)", file=sys.stderr)
    if errors:
        print(f"validate: {len(errors)} errors, {len(report.warnings)} warnings. Fix the errors above "
              "(or delete those rows) and run validate again.", file=sys.stderr)
        return 2
    return 0
