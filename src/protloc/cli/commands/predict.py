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
    from protloc.core.atomic import write_csv
    from protloc.core.runfolder import RunFolder
    from protloc.inference.inputs import run_channels
    from protloc.inference.predictor import Predictor

    rf = RunFolder(args.run).check(need_models=args.engine == "torch")
    folds = args.folds
    chosen = args.channels is not None
    if not chosen:  # default: the run's channels (typed; read as in training)
        args.channels = run_channels(rf.preprocessing(), args.format)
    table = table_from_args(args, split="test", labels=False)
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
    sub = res.submission_frame()
    probs = res.probs_frame() if args.probs else None
    if probs is not None:  # probabilities first: the submission appears last, when all is done
        write_csv(args.probs, probs, float_format="%.6f")
    write_csv(args.out, sub)
    n_empty = sum(1 for s in res.label_strings if not s)
    flagged = "" if res.ood_flag is None else f", {int(res.ood_flag.sum())} unlike the training images (ood_flag)"
    print(f"wrote {args.out} ({len(sub)} images, {n_empty} without a label{flagged}"
          f"{', ' + str(len(res.skipped)) + ' skipped' if res.skipped else ''})"
          + (f" and {args.probs}" if args.probs else ""))
    return 0
