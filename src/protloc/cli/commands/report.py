"""``protloc report RUN [--csv ... --images ...] [--out RUN/report.html]``: evaluation report."""

from __future__ import annotations

import time
from pathlib import Path

from protloc.cli.main import new_command
from protloc.cli.options import InDir, InFile, OutFile, declare_paths, device, nonneg_int, run_folder


def register(sub) -> None:
    p = new_command(sub, "report", help="write the evaluation report of a run (one offline HTML file)",
                    example="protloc report runs/r1            # out-of-fold predictions -> runs/r1/report.html",
                    description="One self-contained HTML file (opens offline): headline numbers, training "
                                "curves, per-class precision/recall/F1 at the chosen thresholds, "
                                "precision-recall curves, probability densities, calibration, label "
                                "co-occurrence, the worst false positives/negatives per class and Grad-CAM "
                                "examples. By default it reports on the run's out-of-fold predictions; "
                                "with --csv/--images (a labeled set) it predicts that set first.")
    p.add_argument("run", help="run folder (made by `protloc train`)")
    g = p.add_argument_group("labeled set to predict and report on (optional)")
    g.add_argument("--csv", help="CSV with ids and labels (Image,Label)")
    g.add_argument("--images", help="folder of image files (also used alone for the OOF galleries)")
    g.add_argument("--data", help="dataset folder holding <split>.csv and <split>/")
    g.add_argument("--split", default="train", help="which split of --data")
    g.add_argument("--format", default="auto", choices=("auto", "rgb", "hpa-channels", "tiff"))
    g.add_argument("--channels", default=None, help="hpa-channels names / tiff indices (default: the run's)")
    g.add_argument("--id-col", default=None)
    g.add_argument("--label-col", default=None)
    g.add_argument("--tta", default="none", choices=("none", "flip", "d4"), help="test-time augmentation")
    p.add_argument("--out", default=None, help="HTML file to write; None means RUN/report.html")
    p.add_argument("--gallery", type=nonneg_int, default=3, help="error images per class and kind")
    p.add_argument("--gradcam", type=nonneg_int, default=8, help="Grad-CAM examples (0 = none)")
    p.add_argument("--device", default=None, type=device, help="cpu, cuda, cuda:N (default: cuda if available)")
    declare_paths(p, run_folder(), InFile("csv", "CSV file"), InDir("images", "image folder"),
                  InDir("data", "dataset folder"), OutFile("out"))
    p.set_defaults(func=run)


def run(args) -> int:
    from protloc.core.runfolder import RunFolder
    from protloc.data.table import load_table
    from protloc.inference.inputs import run_channels
    from protloc.reports.report import build_report, folder_reader, from_oof, from_table

    t0 = time.time()
    rf = RunFolder(args.run).check(need_models=False)
    pre = rf.preprocessing()
    if args.csv or args.data:
        chosen = args.channels is not None
        table = load_table(args.csv, args.images, data=args.data, split=args.split, fmt=args.format,
                           channels=args.channels if chosen else run_channels(pre, args.format),
                           schema=pre.schema, id_col=args.id_col, label_col=args.label_col, labels=True)
        data = from_table(rf, table, tta=args.tta, progress=True, device=args.device, channels_chosen=chosen)
    else:
        data = from_oof(rf)
        if args.images:
            data.notes = [n for n in data.notes if not n.startswith("no images found")]
            data.read = folder_reader(Path(args.images), pre)
    page = build_report(rf, data, gallery_k=args.gallery, n_gradcam=args.gradcam, device=args.device)
    out = Path(args.out) if args.out else rf.report_html
    page.save(out)
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.1f} MB, {len(data.ids)} images, {time.time() - t0:.1f} s)")
    return 0
