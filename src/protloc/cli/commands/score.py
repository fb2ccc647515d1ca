"""``protloc score``: score a submission CSV against the truth, the way the competition does."""

from __future__ import annotations

from protloc.cli.main import new_command
from protloc.cli.options import InFile, OutFile, SchemaArg, declare_paths


def register(sub) -> None:
    p = new_command(sub, "score", help="macro F1 of a submission file against the truth (per-class table)",
                    example="protloc score --truth test.csv --pred submission.csv")
    p.add_argument("--truth", required=True, help="CSV with Image,Label (true labels)")
    p.add_argument("--pred", required=True, help="CSV with Image,Predicted (or Label): space-separated class ids")
    p.add_argument("--schema", default="ghent10", help="label schema: ghent10, hpa28 or a YAML/JSON file")
    p.add_argument("--id-col", default=None, help="id column [default: Image or Id]")
    p.add_argument("--pred-col", default=None, help="prediction column [default: Predicted, Label or Target]")
    p.add_argument("--json", default=None, help="also save the scores as JSON here")
    declare_paths(p, InFile("truth", "CSV file"), InFile("pred", "CSV file"), SchemaArg("schema"), OutFile("json"))
    p.set_defaults(func=run)


def run(args) -> int:
    from protloc.core.atomic import write_json
    from protloc.reports.evaluate import print_summary, score_files

    s = score_files(args.truth, args.pred, schema=args.schema, id_col=args.id_col, pred_col=args.pred_col)
    print_summary(s, title=f"{args.pred} vs {args.truth}")
    print(f"macro F1 (competition: all classes, absent classes count 0): {s['macro_f1']:.4f}")
    if args.json:
        write_json(args.json, s)
    return 0
