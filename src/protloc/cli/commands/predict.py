"""``protloc predict RUN --images DIR --out submission.csv``: labels for new images."""

from __future__ import annotations

import sys

from protloc.cli.main import add_data_args, new_command
from protloc.cli.options import OutFile, declare_paths, device, folds, number, positive_int, run_folder


def register(sub) -> None:
    p = new_command(sub, "predict", help="predict labels for images (submission CSV + probabilities)",
                    example="protloc predict runs/r1 --images test/ --csv test.csv --out submission.csv "
                            "--probs probs.csv --tta d4",
                    description="Predict every image with the run's fold ensemble and thresholds; write "
                                "the competition file (Image,Label with sorted space-separated class "
                                "ids, in CSV order or sorted folder order) and optionally the "
                                "probabilities. Both files are written atomically: a failure leaves "
                                "no partial file. Images of another size are resized (one warning).")
    p.add_argument("run", help="run folder (made by `protloc train`)")
    add_data_args(p, labels=False, split="test")
    p.add_argument("--out", required=True, help="submission CSV to write (Image,Label)")
    p.add_argument("--probs", default=None, help="also write probabilities (Image + one column per class, + "
                   "ood_score and ood_flag when the run has an out-of-distribution reference)")
    p.add_argument("--tta", default="none", choices=("none", "flip", "d4"),
                   help="test-time augmentation: d4 = 8 flips/rotations")
    p.add_argument("--merge", default="mean", choices=("mean", "max"),
                   help="how probabilities are merged over TTA views and fold models")
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx"),
                   help="auto: onnxruntime on CPU (the run's ONNX model, exported once and cached in the run "
                        "folder), torch on CUDA; torch: PyTorch")
    p.add_argument("--int8", default="auto", choices=("auto", "on", "off"),
                   help="the int8 model of `protloc export --int8`: auto uses it when its recorded held-out "
                        "macro-F1 drop is <= 0.005")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--folds", default=None, type=folds,
                   help="comma-separated fold numbers to ensemble; all folds when not given")
    p.add_argument("--device", default=None, type=device, help="cpu, cuda, cuda:1; cuda when available if not given")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU worker threads (each decodes and predicts its own batches); one per core if not given")
    p.add_argument("--at-least-one", action="store_true",
                   help="give an image with no class above threshold its most probable class")
    p.add_argument("--skip-bad", action="store_true",
                   help="report unreadable/missing images and leave them out instead of stopping")
    add_reading_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_parts_args(p)
    declare_paths(p, run_folder(), OutFile("out"), OutFile("probs"))
    p.set_defaults(func=run)


def add_reading_args(p) -> None:
    """``--pixel-size`` and ``--z`` of the commands that read images for a run (predict, evaluate)."""
    g = p.add_argument_group("reading (default: as the run was trained)")
    g.add_argument("--pixel-size", default=None, metavar="UM",
                   type=number(min=0, min_open=True, expected="a pixel size in µm > 0",
                               fix="e.g. --pixel-size 0.1 (leave it out when unknown)"),
                   help="physical pixel size of these images in micrometres (overrides the files' metadata); "
                        "images are scaled to the run's training pixel size")
    g.add_argument("--z", default=None, choices=("max", "mean", "middle"),
                   help="projection of Z stacks (default: the run's)")


def run(args) -> int:
    from protloc.cli.main import table_from_args
    from protloc.core.atomic import write_csv, write_rows
    from protloc.core.runfolder import RunFolder
    from protloc.inference.inputs import run_channels
    from protloc.inference.predictor import Predictor

    rf = RunFolder(args.run).check(need_models=args.engine == "torch")
    folds = args.folds
    chosen = args.channels is not None
    if not chosen:  # default: the run's channels (typed; read as in training)
        args.channels = run_channels(rf.preprocessing(), args.format)
    table = table_from_args(args, split="test", labels=False)
    if parts_mode(args):
        return run_parts(args, rf, table, channels_chosen=chosen)
    notes: list[str] = []  # printed once predict worked (an error is then the only line)
    pred = Predictor.from_run(rf.root, device=args.device, engine=args.engine, folds=folds,
                              threads=args.threads, int8=args.int8, note=notes.append, z=args.z,
                              axes=args.axes, pixel_size=args.pixel_size)
    res = pred.predict_table(table, tta=args.tta, merge=args.merge, batch_size=args.batch_size,
                             progress=not args.no_progress, on_error="skip" if args.skip_bad else "raise",
                             at_least_one=True if args.at_least_one else None, channels_chosen=chosen)
    for msg in notes:
        print(f"note: {msg}", file=sys.stderr)
    if not args.no_progress:
        print(f"engine: {pred.describe()}", file=sys.stderr)
    for _, msg in res.skipped:
        print(f"skipped: {msg}", file=sys.stderr)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    probs = res.probs_frame() if args.probs else None
    if probs is not None:  # probabilities first: the submission appears last, when all is done
        write_csv(args.probs, probs, float_format="%.6f")
    # the csv module, not a DataFrame: importing pandas took 0.3 s of every predict (issue 13)
    write_rows(args.out, ["Image", "Label"], zip(res.ids, res.label_strings))
    n_empty = sum(1 for s in res.label_strings if not s)
    flagged = "" if res.ood_flag is None else f", {int(res.ood_flag.sum())} unlike the training images (ood_flag)"
    print(f"wrote {args.out} ({len(res)} images, {n_empty} without a label{flagged}"
          f"{', ' + str(len(res.skipped)) + ' skipped' if res.skipped else ''})"
          + (f" and {args.probs}" if args.probs else ""))
    return 0


# --------------------------------------------------------------------------------------------
# scale out: Lightning ranks / job-array shards writing resumable parts (inference.distributed)
# --------------------------------------------------------------------------------------------
def add_parts_args(p) -> None:
    from protloc.cli.options import from_function, nonneg_int
    from protloc.cluster import parse_devices
    from protloc.inference.distributed import parse_shard

    g = p.add_argument_group("scale out", "Any of these predicts in parts of rows written next to --out "
                             "(OUT.parts/), streamed and resumable: a rerun skips finished parts, and the parts "
                             "are merged in input order when all are done (docs/scale.md).")
    g.add_argument("--devices", type=from_function(parse_devices, "devices"), default=None, metavar="N",
                   help="processes (CPU) or GPUs per node for Lightning's Trainer.predict, e.g. 1, 4, auto or 0,1; "
                        "under srun/torchrun: the tasks per node")
    g.add_argument("--num-nodes", type=positive_int, default=None, metavar="M", help="machines (multi-node DDP)")
    g.add_argument("--shard", type=from_function(parse_shard, "shard"), default=None, metavar="I/N",
                   help="predict only shard I of N (0-based; job arrays, e.g. on the ONNX engine); the last "
                        "shard to finish merges")
    g.add_argument("--merge-shards", action="store_true",
                   help="only merge the finished parts into --out (and --probs); an error lists missing parts")
    g.add_argument("--part-rows", type=positive_int, default=None, metavar="R",
                   help="rows per part (default: about 64 parts, 256 to 10,000 rows each)")
    g.add_argument("--workers", type=nonneg_int, default=None, metavar="W",
                   help="image-decoding processes per rank (default: one per two cores of the rank, at most 4)")


def parts_mode(args) -> bool:
    return any(getattr(args, k, None) not in (None, False) for k in
               ("devices", "num_nodes", "shard", "merge_shards", "part_rows", "workers"))


def run_parts(args, rf, table, *, channels_chosen: bool) -> int:
    from protloc.core.errors import InputError
    from protloc.inference.distributed import parts_dir, predict_parts

    device = args.device
    if device and ":" in str(device) and args.devices is not None:
        raise InputError("--device", expected="cpu or cuda with --devices", got=str(device),
                         fix="choose GPUs with --devices (e.g. --devices 0,1), not --device cuda:N")
    accelerator = "auto" if not device else ("cpu" if str(device) == "cpu" else "gpu")
    kw = dict(device=device, engine=args.engine, folds=args.folds, threads=args.threads)
    for extra in ("int8", "z", "axes", "pixel_size"):  # passed on when given
        if getattr(args, extra, None) is not None:
            kw[extra] = getattr(args, extra)
    res = predict_parts(rf.root, table, args.out, probs_out=args.probs, predictor_kw=kw, tta=args.tta,
                        merge=args.merge, batch_size=args.batch_size,
                        at_least_one=True if args.at_least_one else None,
                        on_error="skip" if args.skip_bad else "raise", channels_chosen=channels_chosen,
                        devices=args.devices or 1, num_nodes=args.num_nodes or 1, accelerator=accelerator,
                        shard=args.shard, part_rows=args.part_rows,
                        workers=-1 if args.workers is None else args.workers, merge_only=args.merge_shards,
                        progress=not args.no_progress)
    if not res.main:
        return 0  # rank 0 reports
    folder = parts_dir(args.out)
    if res.note:
        print(res.note)
        return 0
    if not res.merged:
        print(f"parts in {folder}: {res.predicted} predicted now, {res.done_before} done before; "
              f"{len(res.missing)} of {res.n_parts} still missing (other shards). The last shard to finish merges; "
              "or run again with --merge-shards")
        return 0
    for _, msg in res.skipped:
        print(f"skipped: {msg}", file=sys.stderr)
    print(f"wrote {args.out} ({res.n_images} images, {res.n_empty} without a label"
          f"{', ' + str(len(res.skipped)) + ' skipped' if res.skipped else ''})"
          + (f" and {args.probs}" if args.probs else "")
          + f"; {res.n_parts} parts in {folder} ({res.done_before} were done before)")
    return 0
