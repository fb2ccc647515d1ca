"""``protloc thresholds RUN``: fit per-class thresholds on the run's out-of-fold probabilities."""

from __future__ import annotations

from argparse import ArgumentTypeError

from protloc.cli.main import new_command
from protloc.cli.options import declare_paths, from_function, nonneg_int, number, probability, run_folder, seed


def register(sub) -> None:
    p = new_command(sub, "thresholds", help="fit per-class decision thresholds on out-of-fold probabilities",
                    example="protloc thresholds runs/r1 --method f1 --at-least-one",
                    description="Fit one threshold per class on RUN/oof.csv (exact F1 search, positive-"
                                "rate matching, or one global threshold), check their stability by "
                                "bootstrap, and save RUN/thresholds.json (used by predict).")
    p.add_argument("run", help="run folder (made by `protloc train`)")
    p.add_argument("--method", default="f1", choices=("f1", "ratio", "global"),
                   help="f1: per-class F1-optimal; ratio: match each class's positive rate; "
                        "global: one threshold maximising macro F1")
    p.add_argument("--at-least-one", action="store_true",
                   help="predict the most probable class for an image where no class passes")
    p.add_argument("--n-bootstrap", type=nonneg_int, default=200, help="bootstrap resamples for stability (0: off)")
    p.add_argument("--min-positives", type=nonneg_int, default=5,
                   help="classes with fewer positives fall back to the robust rule")
    p.add_argument("--max-threshold-std", type=number(min=0), default=0.1,
                   help="classes whose bootstrap threshold std exceeds this fall back")
    p.add_argument("--fallback", default="global", type=from_function(_fallback, "fallback"),
                   help="robust rule for unstable classes and classes with too few positives: global (the "
                        "one macro-F1 threshold), median (median bootstrap threshold), auto (median for "
                        "unstable classes, global for too few positives), or a number in [0, 1]")
    p.add_argument("--seed", type=seed, default=0, help="bootstrap random seed")
    declare_paths(p, run_folder())
    p.set_defaults(func=run)


def _fallback(text: str):
    from protloc.core.errors import InputError

    if text in ("auto", "global", "median"):
        return text
    try:
        return probability(text)
    except ArgumentTypeError:
        raise InputError("--fallback", expected="auto, global, median or a number in [0, 1]", got=repr(text),
                         fix="e.g. --fallback global") from None


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from protloc.core.runfolder import RunFolder
    from protloc.core.thresholds import fit_run_thresholds

    rf = RunFolder(args.run)
    opt = fit_run_thresholds(rf, method=args.method, at_least_one=args.at_least_one,
                             n_bootstrap=args.n_bootstrap, min_positives=args.min_positives,
                             max_threshold_std=args.max_threshold_std, fallback=args.fallback,
                             random_state=args.seed)

    def f(v, nd=3):
        return "-" if v is None else f"{v:.{nd}f}"

    table = Table(title=f"thresholds ({args.method}) on {opt.n_samples_} out-of-fold images")
    for col, just in (("id", "right"), ("class", "left"), ("pos", "right"), ("thr", "right"),
                      ("F1@0.5", "right"), ("F1 after", "right"), ("thr std", "right"),
                      ("F1 std", "right"), ("fallback", "left")):
        table.add_column(col, justify=just)
    for r in opt.per_class():
        table.add_row(str(r["id"]), r["class"], str(r["n_positives"]), f(r["threshold"]),
                      f(r["f1_before"]), f(r["f1_after"]), f(r["threshold_std"]), f(r["f1_std"]),
                      r["fallback"] or "")
    con = Console()
    con.print(table)
    con.print(f"macro F1: {opt.macro_f1_before_:.4f} at 0.5 -> {opt.macro_f1_after_:.4f} with these "
              f"thresholds{' (at least one label)' if args.at_least_one else ''}; "
              f"global threshold {opt.global_threshold_:.3f}")
    tta = rf.oof_tta()
    con.print(f"fitted on out-of-fold probabilities with test-time augmentation '{tta}' (train --oof-tta): "
              f"they fit `protloc predict --tta {tta if tta != 'mixed' else 'd4'}` best")
    for k, fb in sorted(opt.fallback_classes_.items()):
        con.print(f"fallback for class {k} ({opt.classes_[k]}): {fb['rule']} threshold, because {fb['reason']}")
    con.print(f"saved {rf.thresholds_json}")
    return 0
