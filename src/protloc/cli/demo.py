"""``protloc demo``: the main job end to end on built-in synthetic data.

synthesize -> validate -> train (default recipe) -> fit thresholds on out-of-fold
probabilities -> predict the test set with D4 TTA -> score against the hidden truth ->
HTML reports. Each stage is the same public command a user would run; the demo prints
the command lines so users can repeat any stage on their own data.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from protloc.core.errors import InputError
from protloc.core.readers import read_json


@dataclass(frozen=True)
class DemoPlan:
    n_train: int
    n_test: int
    size: int
    preset: str
    max_minutes: float
    tta: str
    epochs: int | None = None  # None: the preset's


# 7 epochs of the default recipe take about 5 minutes on 2 idle cores; the budget only bites on a busy
# machine (then the planner fits fewer epochs into it), so on an idle one the demo is deterministic
FULL = DemoPlan(n_train=2000, n_test=500, size=128, preset="default", max_minutes=6.0, tta="d4", epochs=7)
QUICK = DemoPlan(n_train=800, n_test=200, size=64, preset="fast", max_minutes=1.0, tta="flip", epochs=10)


def _run(argv: list[str], log: list[str]) -> None:
    from protloc.cli.main import main

    line = "protloc " + " ".join(shlex.quote(a) for a in argv)
    log.append(line)
    print(f"\n$ {line}", flush=True)
    rc = main(argv)
    if rc != 0:
        raise InputError(f"demo stage failed (exit {rc}): {line}", fix="see the message above")


def run_demo(out: str | Path, *, quick: bool = False, seed: int = 0, workers: int | None = None) -> dict:
    """Run the whole pipeline into ``out``; return a summary dict (also saved as demo.json)."""
    from protloc.core.atomic import write_json
    from protloc.core.runfolder import RunFolder

    plan = QUICK if quick else FULL
    out = Path(out)
    data, run = out / "data", out / "run"
    sub, probs = out / "submission.csv", out / "test_probs.csv"
    log: list[str] = []
    t0 = time.time()
    if not (data / "train.csv").is_file():
        _run(["synth", str(data), "--n-train", str(plan.n_train), "--n-test", str(plan.n_test),
              "--size", str(plan.size), "--seed", str(seed)], log)
    else:
        print(f"using the existing synthetic dataset in {data}")
    _run(["validate", "--data", str(data)], log)
    _run(["explore", "--data", str(data), "--out", str(out / "explore.html"),
          "--sample", "400" if not quick else "100"], log)
    if (run / "models").is_dir() and any((run / "models").glob("fold*.pt")):
        print(f"using the trained run in {run} (delete it to retrain)")
    else:
        _run(["train", "--data", str(data), "--out", str(run), "--preset", plan.preset,
              "--max-minutes", str(plan.max_minutes), "--seed", str(seed)]
             + (["--epochs", str(plan.epochs)] if plan.epochs else []), log)
    _run(["thresholds", str(run), "--method", "f1"], log)
    _run(["predict", str(run), "--images", str(data / "test"), "--csv", str(data / "test.csv"),
          "--out", str(sub), "--probs", str(probs), "--tta", plan.tta], log)
    scores = out / "test_scores.json"
    _run(["score", "--truth", str(data / "test_labels.csv"), "--pred", str(sub), "--json", str(scores)], log)
    f1 = read_json(scores, what="test scores")["macro_f1"]
    report = RunFolder(run).report_html
    _run(["report", str(run), "--out", str(report)], log)
    summary = {
        "test_macro_f1": round(f1, 4),
        "reference_notebook_val_macro_f1": 0.37,
        "minutes": round((time.time() - t0) / 60, 2),
        "plan": plan.__dict__,
        "outputs": {"data": str(data), "run": str(run), "submission": str(sub), "probabilities": str(probs),
                    "report": str(report), "explore": str(out / "explore.html"),
                    "scores": str(scores)},
        "commands": log,
    }
    write_json(out / "demo.json", summary)
    return summary


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"protloc demo: test macro F1 = {summary['test_macro_f1']:.3f} "
                    f"(in {summary['minutes']:.1f} min)", show_header=False)
    for k, v in summary["outputs"].items():
        t.add_row(k, v)
    c.print(t)
    c.print("Open the report in a browser; serve the model with "
            f"[bold]protloc serve {summary['outputs']['run']}[/bold]")
    print(json.dumps({"test_macro_f1": summary["test_macro_f1"]}))
