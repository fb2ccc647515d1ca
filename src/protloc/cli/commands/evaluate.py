"""``protloc evaluate``: metrics of a trained run on a labeled image set."""

from __future__ import annotations

from protloc.cli.main import add_data_args, new_command, table_from_args


def register(sub) -> None:
    p = new_command(sub, "evaluate", help="evaluate a run on labeled images (per-class table + JSON)",
                    example="protloc evaluate runs/r1 --data data/ --tta d4")
    p.add_argument("run", help="run folder (from protloc train)")
    add_data_args(p, split="test")
    p.add_argument("--tta", default="d4", choices=("none", "flip", "d4"), help="test-time augmentation")
    p.add_argument("--threshold", default=None, type=float,
                   help="one threshold for every class [default: the run's thresholds.json, else 0.5]")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default=None, help="where to save the metrics [default: RUN/evaluation.json]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from protloc.core.atomic import write_json
    from protloc.reports.evaluate import evaluate_probs, print_summary
    from protloc.inference.predictor import Predictor
    from protloc.core.runfolder import RunFolder

    rf = RunFolder(args.run).check()
    predictor = Predictor.from_run(rf.root)
    args.schema = predictor.preprocessing.schema  # labels are read in the run's schema
    table = table_from_args(args, split="test", labels=True)
    res = predictor.predict_table(table, tta=args.tta, batch_size=args.batch_size, progress=not args.quiet)
    thresholds = predictor.thresholds if args.threshold is None else args.threshold
    pos = {iid: i for i, iid in enumerate(table.ids)}
    y = table.y()[[pos[i] for i in res.ids]]
    s = evaluate_probs(y, res.probs, thresholds=thresholds, classes=predictor.classes)
    s.update(run=str(rf.root), csv=str(table.csv_path), images=str(table.images), tta=args.tta,
             threshold_source="--threshold" if args.threshold is not None else
             ("thresholds.json" if rf.thresholds_json.is_file() else "0.5 (no thresholds.json)"))
    out = Path(args.json) if args.json else rf.root / "evaluation.json"
    write_json(out, s)
    print_summary(s, title=f"{rf.root.name} on {table.csv_path.name if table.csv_path else table.images} "
                           f"(tta {args.tta}, thresholds {s['threshold_source']})")
    print(f"saved {out}")
    return 0
