"""Quality under a wall-clock budget: the default recipe vs ``--preset seed`` on synthetic data.

One command reruns the whole comparison:

    python benchmarks/bench_quality.py                 # 3000 train / 1000 test, 128 px, 15 min each

It (1) synthesizes the benchmark with ``protloc.synth.dataset.make_dataset`` (once; reused), (2) measures
the label-noise ceiling (macro F1 of the noisy training labels against the clean ones), (3) runs
``protloc train --preset P --max-minutes M`` for each recipe (same budget, same data, same
holdout), (4) predicts the 1000 test images and scores them with the competition's macro F1 at
the 0.5 threshold (the seed recipe's rule) and with per-class thresholds tuned on the
out-of-fold predictions. Results: ``benchmarks/results/bench_quality.json``.

Takes about ``len(recipes) * minutes`` plus ~5 min for synthesis (first time) and prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def noise_ceiling(data: Path) -> dict:
    """Macro F1 of the noisy training labels scored against the clean labels."""
    from protloc.reports.evaluate import score_frames
    from protloc.core.schema import get_schema

    clean = pd.read_csv(data / "train_clean_labels.csv", dtype=str)
    noisy = pd.read_csv(data / "train.csv", dtype=str).rename(columns={"Label": "Predicted"})
    s = score_frames(clean, noisy, schema=get_schema("ghent10"))
    return {"macro_f1_noisy_vs_clean": round(s["macro_f1"], 4),
            "images_with_changed_labels": int((clean.set_index("Image")["Label"]
                                               != noisy.set_index("Image")["Predicted"]).sum())}


def start_training(data: Path, out: Path, preset: str, minutes: float, extra: list[str]):
    """Launch ``protloc train`` in the background; stderr goes to RUNS/<name>.stderr."""
    cmd = [sys.executable, "-m", "protloc.cli.main", "train", "--data", str(data), "--out", str(out), "--preset", preset,
           "--max-minutes", str(minutes), "--overwrite", "--quiet", *extra]
    print("$ protloc", " ".join(cmd[3:]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(out.parent / f"{out.name}.stderr", "w"))
    return proc, time.time(), "protloc " + " ".join(cmd[3:])


def finish_training(preset: str, proc, t0: float, command: str, out: Path) -> dict:
    if proc.wait():
        raise SystemExit(f"training {preset} failed:\n{(out.parent / f'{out.name}.stderr').read_text()[-3000:]}")
    wall = json.loads((out / "summary.json").read_text()).get("wall_seconds") if (out / "summary.json").is_file() else None
    return {"train_wall_s": wall if wall is not None else round(time.time() - t0, 1), "command": command}


def test_scores(run: Path, data: Path, tta: str) -> dict:
    from protloc.reports.evaluate import evaluate_probs
    from protloc.core.metrics import best_threshold_macro_f1, macro_f1
    from protloc.inference.predictor import Predictor
    from protloc.core.runfolder import RunFolder
    from protloc.data.table import load_table

    rf = RunFolder(run)
    pred = Predictor.from_run(run)
    table = load_table(data / "test_labels.csv", data / "test", schema=pred.preprocessing.schema)
    t0 = time.time()
    res = pred.predict_table(table, tta=tta, batch_size=64)
    infer_s = time.time() - t0
    pos = {iid: i for i, iid in enumerate(table.ids)}
    y = table.y()[[pos[i] for i in res.ids]]
    _, oof_probs, oof_y, _ = rf.oof()
    _, thr = best_threshold_macro_f1(oof_y, oof_probs)
    s05 = evaluate_probs(y, res.probs, thresholds=0.5, classes=pred.classes)
    summ = rf.summary()
    return {"test_macro_f1_at_0.5": round(macro_f1(y, res.probs >= 0.5, zero_division="zero"), 4),
            "test_macro_f1_oof_thresholds": round(macro_f1(y, res.probs >= thr, zero_division="zero"), 4),
            "test_mAP": round(s05["mAP"], 4), "test_images": len(y), "tta": tta,
            "infer_images_per_s": round(len(y) / infer_s, 1),
            "oof_macro_f1_at_0.5": round(summ.get("val_macro_f1", float("nan")), 4),
            "epochs_run": [f.get("epochs_run") for f in summ.get("fold_summaries", [])],
            "best_epoch": [f.get("best_epoch") for f in summ.get("fold_summaries", [])],
            "stopped_by_time_budget": [f.get("stopped_by_time_budget") for f in summ.get("fold_summaries", [])],
            "per_class_f1_at_0.5": [pc["f1"] for pc in s05["per_class"]]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.environ.get("PROTLOC_BENCH_DIR", "/tmp/protloc-bench"),
                    help="folder for the synthetic data and runs")
    ap.add_argument("--recipes", default="default,seed")
    ap.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget per recipe (--max-minutes)")
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128, help="synthetic image size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tta", default="none", choices=("none", "flip", "d4"))
    ap.add_argument("--train-args", default="", help="extra flags for every protloc train, e.g. '--threads 2'")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra recipe NAME=PRESET:FLAGS, e.g. 'softf1=default:--loss bce+0.5*softf1'")
    ap.add_argument("--parallel", action="store_true",
                    help="train the recipes at the same time (threads split), e.g. on a shared machine")
    ap.add_argument("--out", default=str(RESULTS / "bench_quality.json"))
    args = ap.parse_args(argv)

    work = Path(args.work)
    data = work / f"synth_{args.n_train}_{args.n_test}_{args.size}_s{args.seed}"
    if not (data / "synth.json").is_file():
        from protloc.synth.dataset import make_dataset

        print(f"synthesizing {args.n_train}+{args.n_test} images into {data}", flush=True)
        make_dataset(data, n_train=args.n_train, n_test=args.n_test, seed=args.seed, size=args.size, overwrite=True)
    res = {"command": "python benchmarks/bench_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "data": str(data), "n_train": args.n_train, "n_test": args.n_test, "size": args.size,
           "minutes_per_recipe": args.minutes, "cores": len(os.sched_getaffinity(0)),
           "load_avg_at_start": round(os.getloadavg()[0], 2),
           "note": "CPU shared with other processes while measuring", "noise_ceiling": noise_ceiling(data),
           "recipes": {}}
    print(json.dumps(res["noise_ceiling"]), flush=True)
    recipes = {p: (p, []) for p in args.recipes.split(",") if p}
    for v in args.variant:  # NAME=PRESET:FLAGS
        name, _, rest = v.partition("=")
        preset, _, flags = rest.partition(":")
        recipes[name] = (preset, flags.split())
    extra = args.train_args.split()
    if args.parallel:
        extra += ["--threads", str(max(1, res["cores"] // len(recipes)))]
    done = {}
    if args.parallel:  # same budget and same (shared) CPU at the same time: a fair race
        procs = {n: start_training(data, work / "runs" / n, p, args.minutes, extra + f) for n, (p, f) in recipes.items()}
        done = {n: finish_training(n, *procs[n], work / "runs" / n) for n in recipes}
    for preset, (base, flags) in recipes.items():
        run = work / "runs" / preset
        r = done.get(preset) or finish_training(preset, *start_training(data, run, base, args.minutes,
                                                                         extra + flags), run)
        r.update(test_scores(run, data, args.tta))
        r["config"] = {k: v for k, v in json.loads(json.dumps(__import__("yaml").safe_load(
            (run / "config.yaml").read_text()))).items() if k in ("model", "size", "epochs", "loss", "lr", "freeze_epochs",
                                                                  "augment", "batch_size", "hidden", "note")}
        res["recipes"][preset] = r
        print(preset, json.dumps({k: v for k, v in r.items() if k != "per_class_f1_at_0.5"}), flush=True)
    res["load_avg_at_end"] = round(os.getloadavg()[0], 2)
    from protloc.core.atomic import write_json

    write_json(args.out, res)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
