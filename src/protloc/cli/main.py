"""The ``protloc`` command. Each subcommand lives in ``protloc/cli/commands/<name>.py`` and exposes
``register(subparsers)`` (which sets ``func``) so this file stays small.

Every user error (bad file, bad option) becomes one clear message on stderr and exit code 2;
Ctrl-C exits 130 without a traceback. ``PROTLOC_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from protloc import __version__
from protloc.cli.options import InDir, InFile, Parser, SchemaArg, check_paths, declare_paths
from protloc.core.errors import InputError

#: subcommands in the order ``--help`` lists them.
COMMANDS = ("demo", "synth", "validate", "split", "explore", "cache", "train", "evaluate", "score",
            "thresholds", "predict", "export", "report", "explain", "serve")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_data_args(p: argparse.ArgumentParser, *, labels: bool = True, split: str = "train") -> None:
    """The data options every data-taking command shares (paths declared for ``check_paths``)."""
    g = p.add_argument_group("data")
    g.add_argument("--csv", help="CSV with an id column (Image/Id) and optionally labels (Label/Target)")
    g.add_argument("--images", help="folder of image files")
    g.add_argument("--data", help=f"dataset folder holding {split}.csv and {split}/ (shortcut)")
    declare_paths(p, InFile("csv", "CSV file"), InDir("images", "image folder"), InDir("data", "dataset folder"))
    g.add_argument("--format", default="auto", choices=("auto", "rgb", "hpa-channels", "tiff"),
                   help="image file layout")
    g.add_argument("--channels", default=None,
                   help="hpa-channels: names, e.g. red,green,blue,yellow or 'all'; tiff: indices 0,1,2")
    g.add_argument("--id-col", default=None, help="id column name (default: Image or Id)")
    g.add_argument("--axes", default=None,
                   help="axes of TIFFs that do not declare theirs, e.g. CYX, ZCYX or YXC (OME/ImageJ files "
                        "name their own)")
    if labels:
        g.add_argument("--label-col", default=None, help="label column name (default: Label or Target)")
        g.add_argument("--schema", default="ghent10", help="label schema: ghent10, hpa28 or a YAML/JSON file")
        declare_paths(p, SchemaArg("schema"))
        g.add_argument("--from-schema", default=None, choices=(None, "hpa28"),
                       help="labels in the CSV use this schema; map them into --schema")


def default_test_split(args) -> None:
    """``--data DIR`` without ``--test-csv/--test-images``: ``DIR/test`` (and ``DIR/test.csv``)
    when the folder has one (explore and validate look at both splits)."""
    from pathlib import Path

    if args.data and not (args.test_csv or args.test_images):
        d = Path(args.data)
        if (d / "test").is_dir():
            args.test_images = str(d / "test")
            args.test_csv = str(d / "test.csv") if (d / "test.csv").is_file() else None


def table_from_args(args, *, split: str = "train", labels=None, strict: bool = True):
    """Build a DataTable from the shared data options."""
    from protloc.data.table import load_table

    return load_table(args.csv, args.images, data=args.data, split=split, fmt=args.format,
                      channels=args.channels, schema=getattr(args, "schema", "ghent10"),
                      id_col=args.id_col, label_col=getattr(args, "label_col", None), labels=labels,
                      from_schema=getattr(args, "from_schema", None), strict=strict,
                      axes=getattr(args, "axes", None))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="protloc", formatter_class=_Formatter,
        description="Predict where a protein lives in the cell from fluorescence microscopy images.",
        epilog="example:\n  protloc demo --quick            # synthesize data, train, predict, report\n"
               "  protloc train --data data/ --out runs/r1\n\n"
               "`protloc COMMAND --help` shows each command's options and an example.")
    parser.add_argument("--version", action="version", version=f"protloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"protloc.cli.commands.{name}").register(sub)
    parser.commands = dict(sub.choices)
    return parser


def new_command(sub, name: str, *, help: str, example: str, description: str | None = None):
    """Add a subparser with the house style: description, defaults shown, an example."""
    return sub.add_parser(name, help=help, description=description or help, formatter_class=_Formatter,
                          epilog=f"example:\n  {example}")


def main(argv=None) -> int:
    """Run ``protloc`` with ``argv``; returns the exit code (2 for any bad input, also from
    argparse, which prints its own ``error:`` line; 0 after ``--help``)."""
    import time

    # a command's time budget (train --max-minutes) counts from when it started: the process start
    # for the `protloc` command itself (argv from the command line: imports included), the call
    # for an in-process caller (tests, `protloc demo`, notebooks)
    if argv is None:
        from protloc.core.cpu import process_started_at

        started_at = process_started_at()
    else:
        started_at = time.time()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        args.started_at = started_at
    except SystemExit as e:  # --help / --version (0) or a bad option (2): a code, not an exception
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    debug = os.environ.get("PROTLOC_DEBUG") == "1"
    try:
        check_paths(args)  # every path option, before the command reads or writes anything
        rc = args.func(args)
        return int(rc or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished outputs are kept; partial files were not written. "
              "For training, rerun with --resume.", file=sys.stderr)
        return 130
    except (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        msg = str(e) if isinstance(e, InputError) else f"{e.strerror or e}: {e.filename or ''}".strip()
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            raise
        print("error: out of memory. Fix: lower --batch-size or --workers", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
