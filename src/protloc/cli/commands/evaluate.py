"""``protloc evaluate``: metrics of a trained run on a labeled image set."""

from __future__ import annotations

from protloc.cli.main import add_data_args, new_command, table_from_args
from protloc.cli.options import OutFile, declare_paths, positive_int, probability, run_folder


def register(sub) -> None:
    p = new_command(sub, "evaluate", help="evaluate a run on labeled images (per-class table + JSON)",
                    example="protloc evaluate runs/r1 --data data/ --tta d4")
    p.add_argument("run", help="run folder (from protloc train)")
    add_data_args(p, split="test")
    p.add_argument("--tta", default="d4", choices=("none", "flip", "d4"), help="test-time augmentation")
    p.add_argument("--threshold", default=None, type=probability,
                   help="one threshold for every class [default: the run's thresholds.json, else 0.5]")
    p.add_argument("--at-least-one", action="store_true",
                   help="give an image with no class above threshold its most probable class "
                        "[default: as the run's thresholds.json says, like predict]")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--json", default=None, help="where to save the metrics [default: RUN/evaluation.json]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from protloc.cli.commands.predict import add_reading_args

    add_reading_args(p)
    declare_paths(p, run_folder(), OutFile("json"))
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np

    from protloc.core.atomic import write_json
    from protloc.core.runfolder import RunFolder
    from protloc.inference.inputs import run_channels
    from protloc.inference.predictor import Predictor
    from protloc.reports.evaluate import evaluate_probs, print_summary

    rf = RunFolder(args.run).check()
    predictor = Predictor.from_run(rf.root, z=args.z, axes=args.axes, pixel_size=args.pixel_size)
    pre = predictor.preprocessing
    args.schema = pre.schema  # labels are read in the run's schema
    chosen = args.channels is not None
    if not chosen:
        args.channels = run_channels(pre, args.format)
    table = table_from_args(args, split="test", labels=True)
    res = predictor.predict_table(table, tta=args.tta, batch_size=args.batch_size, progress=not args.quiet,
                                  channels_chosen=chosen)
    rule = predictor.threshold_rule
    at_least_one = True if args.at_least_one else rule.at_least_one  # the rule predict applies
    pos = {iid: i for i, iid in enumerate(table.ids)}
    y = table.y()[[pos[i] for i in res.ids]]
    s = evaluate_probs(y, res.probs, thresholds=rule.values if args.threshold is None else args.threshold,
                       at_least_one=at_least_one, classes=predictor.classes)
    source = "--threshold" if args.threshold is not None else rule.source
    s.update(run=str(rf.root), csv=str(table.csv_path), images=str(table.images), tta=args.tta,
             threshold_source=source)
    if res.ood_score is not None:
        s["ood"] = {"n": int(len(res.ood_score)), "flagged": int(res.ood_flag.sum()),
                    "flagged_fraction": round(float(res.ood_flag.mean()), 4),
                    "median_score": round(float(np.median(res.ood_score)), 4)}
        print(f"out of distribution: {s['ood']['flagged']} of {s['ood']['n']} images flagged (ood_score > 1)")
    out = Path(args.json) if args.json else rf.evaluation_json
    write_json(out, s)
    print_summary(s, title=f"{rf.root.name} on {table.csv_path.name if table.csv_path else table.images} "
                           f"(tta {args.tta}, thresholds {source}{', at least one label' if at_least_one else ''})")
    print(f"saved {out}")
    return 0
