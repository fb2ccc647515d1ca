"""``protloc cache``: decode a dataset once into the sharded image store, inspect or clear it."""

from __future__ import annotations

import sys

from protloc.cli.main import add_data_args, new_command, table_from_args
from protloc.cli.options import OutDir, declare_paths, integer, nonneg_int, positive_number


def register(sub) -> None:
    p = new_command(sub, "cache", help="decode images once into the sharded image cache (or --info/--clear)",
                    example="protloc cache --csv train.csv --images train/ --size 128")
    add_data_args(p)  # label options accepted (ignored) so every data command takes the same flags
    g = p.add_argument_group("cache")
    g.add_argument("--size", default=128, help="image side length in pixels after resizing",
                   type=integer(min=8, max=4096, expected="8 to 4096 pixels", fix="e.g. --size 128"))
    g.add_argument("--info", action="store_true", help="list cache entries (of this dataset if given)")
    g.add_argument("--clear", action="store_true", help="delete cache entries (of this dataset if given, else all)")
    g.add_argument("--skip-bad", action="store_true",
                   help="cache unreadable images as black and list them instead of stopping")
    g.add_argument("--workers", type=nonneg_int, default=0, help="decoding processes, 0 = min(4, CPUs)")
    g.add_argument("--compress", choices=("none", "zstd"), default=None,
                   help="shard compression of a new entry: none (fastest reads) or zstd (~1.8x smaller; "
                        "train then reuses it) [default: none]")
    g.add_argument("--intensity", default="auto", choices=("auto", "scale", "percentile"),
                   help="intensity rule, as `protloc train --intensity` (the cache is the one training uses)")
    g.add_argument("--z", default="max", choices=("max", "mean", "middle"), help="projection of Z stacks")
    g.add_argument("--pixel-size", type=positive_number, default=None, metavar="UM",
                   help="pixel size of the images in micrometres, as `protloc train --pixel-size`")
    add_store_args(g)
    declare_paths(p, OutDir("cache_dir", "cache folder"))
    p.set_defaults(func=run)


def add_store_args(g) -> None:
    """``--cache-dir`` and ``--trust-cache`` (shared by ``protloc cache`` and ``protloc train``)."""
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where decoded images are stored (default: $PROTLOC_CACHE_DIR or ~/.cache/protloc); "
                        "on a cluster, a folder every node sees")
    g.add_argument("--trust-cache", action="store_true", default=None,
                   help="use a complete cache entry without statting every image file again "
                        "(also PROTLOC_TRUST_CACHE=1); only when the image folder did not change")


def apply_store_args(args) -> None:
    """Export the options as environment variables, so DDP ranks launched later see them too."""
    import os

    if getattr(args, "cache_dir", None):
        from pathlib import Path

        from protloc.core.errors import InputError

        d = Path(args.cache_dir).expanduser()
        if d.exists() and not d.is_dir():
            raise InputError("--cache-dir", expected="a folder", got=f"the file {d}",
                             fix="pass a folder (it is created if missing)")
        os.environ["PROTLOC_CACHE_DIR"] = str(d.resolve())
    if getattr(args, "trust_cache", None):
        os.environ["PROTLOC_TRUST_CACHE"] = "1"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def _print_info(entries, console) -> None:
    from rich.table import Table

    from protloc.data.cache import cache_dir

    if not entries:
        console.print(f"no cache entries in {cache_dir()}")
        return
    t = Table(title=f"decode cache: {cache_dir()}")
    for col in ("key", "images", "n", "size", "channels", "bad", "MB", "up to date"):
        t.add_column(col, overflow="fold")
    for e in entries:
        cur = "" if e["current"] is None else ("yes" if e["current"] else "no (files changed or build unfinished)")
        if e["format"] != "zarr":
            cur = e["format"]
        elif not e["complete"]:
            cur = cur or "unfinished build (resumes on the next run)"
        t.add_row(e["key"], str(e["images"]), str(e["n"]), str(e["size"]), ",".join(e["channels"] or []),
                  str(len(e["bad"] or [])), f"{e['bytes'] / 2**20:,.1f}", cur)
    console.print(t)


def run(args) -> int:
    import time

    from rich.console import Console

    from protloc.data.cache import cache_dir, cache_info, clear_cache, load_cached

    console = Console(width=None if sys.stdout.isatty() else 160)
    apply_store_args(args)
    has_data = bool(args.csv or args.images or args.data)
    table = table_from_args(args, labels=False) if has_data else None
    for note in (table.notes if table is not None else []):  # never drop rows silently
        print(f"note: {note}", file=sys.stderr)
    if args.clear:
        n, freed = clear_cache(table)
        console.print(f"removed {n} cache entries ({_mb(freed)}) from {cache_dir()}")
        return 0
    from protloc.data.reading import training_reading

    reading = None if table is None else \
        training_reading(table, intensity=args.intensity, z=args.z, pixel_size=args.pixel_size)[0]
    if args.info or table is None:
        _print_info(cache_info(table, size=args.size if table is not None else None, reading=reading,
                               pixel_size=args.pixel_size), console)
        return 0
    t0 = time.perf_counter()
    ds = load_cached(table, size=args.size, workers=args.workers or None, skip_bad=args.skip_bad, progress=True,
                     compress=args.compress, reading=reading, pixel_size=args.pixel_size)
    dt = time.perf_counter() - t0
    disk = ds.images.disk_bytes() if hasattr(ds.images, "disk_bytes") else ds.images.nbytes
    console.print(f"cached {ds.images.shape[0]} images as {tuple(ds.images.shape)} uint8 "
                  f"({_mb(ds.images.nbytes)}, {_mb(disk)} on disk) in {dt:.1f} s -> {ds.path}")
    for i, msg in zip(ds.bad, ds.bad_messages):
        print(f"warning: {table.where(i)}: {msg} (cached as a black image)", file=sys.stderr)
    return 0
