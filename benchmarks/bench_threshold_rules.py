"""How thresholds are fitted, compared paired on finished runs (issue 10): the same weights, only
the rule differs, so the comparison is free of the training noise that makes single-run recipe
comparisons uncertain (two runs of one recipe differed by 0.04 at 13 vs 14 epochs).

For each run folder (made by ``benchmarks/bench_transfer.py``: its ``data.json`` points to a
dataset folder with ``train/``, ``test/`` and ``test_labels.csv``) the probabilities of its
validation (out-of-fold) images and of the test images are made once with ``protloc predict``
(``--tta none`` and ``--tta d4``, cached in ``--cache``); every rule fits thresholds on the
validation probabilities and labels the D4 test probabilities (what ``predict --tta d4`` does);
test macro F1 per rule and run, and per rule the mean, the median difference to rule ``A`` (the
previous default) and how many runs it wins and loses against it.

Rules: which validation probabilities are fitted on (single view = the previous ``oof.csv``, or
D4 = ``--oof-tta d4``) and :class:`~protloc.core.thresholds.ThresholdOptimizer` options.

    python benchmarks/bench_threshold_rules.py --out benchmarks/results/threshold_rules_selection.json \\
        /work/tmp-bench/sel/runs/*/       # runs of SELECTION styles: choose here
    python benchmarks/bench_threshold_rules.py --out benchmarks/results/threshold_rules_heldout.json \\
        RUN_WIDEFIELD RUN_CONFOCAL        # held-out styles: report only
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"

#: name -> (validation probabilities fitted on, ThresholdOptimizer options)
RULES = {
    "A_single_view_auto": ("none", dict(fallback="auto")),  # the previous default
    "B_d4_auto": ("d4", dict(fallback="auto")),
    "C_d4_auto_at_least_one": ("d4", dict(fallback="auto", at_least_one=True)),
    "D_d4_no_fallback": ("d4", dict(fallback="auto", max_threshold_std=1e9)),
    "E_d4_one_global_threshold": ("d4", dict(method="global")),
    "F_d4_ratio": ("d4", dict(method="ratio", fallback="auto")),
    "G_d4_no_fallback_at_least_one": ("d4", dict(fallback="auto", max_threshold_std=1e9, at_least_one=True)),
    "H_single_view_no_fallback": ("none", dict(fallback="auto", max_threshold_std=1e9)),
    "I_d4_fallback_global": ("d4", dict(fallback="global")),  # the new default
    "J_d4_fallback_global_at_least_one": ("d4", dict(fallback="global", at_least_one=True)),
    "K_single_view_fallback_global": ("none", dict(fallback="global")),
}
BASE = "A_single_view_auto"


def probs_of(run: Path, images: Path, ids_csv: Path, out: Path, tta: str, threads: int) -> pd.DataFrame:
    if not out.is_file():
        protloc = Path(sys.executable).with_name("protloc")
        cmd = [str(protloc)] if protloc.exists() else [sys.executable, "-m", "protloc"]
        subprocess.run([*cmd, "predict", str(run), "--images", str(images), "--csv", str(ids_csv),
                        "--out", str(out.with_suffix(".labels.csv")), "--probs", str(out), "--tta", tta,
                        "--no-progress", "--threads", str(threads)], check=True, capture_output=True)
    return pd.read_csv(out, dtype={"Image": str}).set_index("Image")


def evaluate(run: Path, cache: Path, threads: int) -> dict:
    from sklearn.metrics import f1_score

    from protloc.core.runfolder import RunFolder
    from protloc.core.thresholds import ThresholdOptimizer

    rf = RunFolder(run)
    data = Path(rf.data_source().images).parent
    ids, _, yv, _ = rf.oof()
    schema = rf.preprocessing().schema
    classes = list(rf.preprocessing().classes)
    truth = pd.read_csv(data / "test_labels.csv", dtype={"Image": str})
    # the probabilities belong to these weights: a rerun into the same folder gets a new cache entry
    stamp = hashlib.sha1(repr([(m.name, m.stat().st_size, m.stat().st_mtime_ns)
                               for m in sorted((run / "models").glob("*.pt"))]).encode()).hexdigest()[:8]
    w = cache / f"{run.name}-{stamp}"
    w.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"Image": ids}).to_csv(w / "val_ids.csv", index=False)
    truth[["Image"]].to_csv(w / "test_ids.csv", index=False)
    val = {t: probs_of(run, data / "train", w / "val_ids.csv", w / f"val_{t}.csv", t, threads)
           .loc[ids, classes].to_numpy(np.float32) for t in ("none", "d4")}
    test = probs_of(run, data / "test", w / "test_ids.csv", w / "test_d4.csv", "d4", threads) \
        .loc[truth["Image"], classes].to_numpy(np.float32)
    yt = schema.to_multihot([schema.parse(t) for t in truth.iloc[:, 1].fillna("").astype(str)])
    out = {"run": str(run), "n_val": len(ids), "n_test": len(truth), "rules": {}}
    for name, (fit_on, kw) in RULES.items():
        kw = dict(kw)
        opt = ThresholdOptimizer(kw.pop("method", "f1"), **kw).fit(val[fit_on], yv, classes=classes)
        pred = opt.predict(test)
        out["rules"][name] = {
            "test_macro_f1": round(float(f1_score(yt, pred, average="macro", zero_division=0)), 4),
            "per_class_f1": dict(zip(classes, (round(float(x), 3) for x in
                                               f1_score(yt, pred, average=None, zero_division=0))))}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders made by bench_transfer.py")
    ap.add_argument("--out", default=str(RESULTS / "threshold_rules.json"))
    ap.add_argument("--cache", default=os.environ.get("PROTLOC_BENCH_DIR", "/tmp/protloc-threshold-rules"),
                    help="where the probabilities of each run are kept")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        r = evaluate(Path(run.rstrip("/")), Path(args.cache), args.threads)
        rows.append(r)
        print(Path(r["run"]).name, {k: v["test_macro_f1"] for k, v in r["rules"].items()}, flush=True)
    f1 = {n: np.array([r["rules"][n]["test_macro_f1"] for r in rows]) for n in RULES}
    summary = {n: {"mean": round(float(f1[n].mean()), 4),
                   "median_diff_vs_A": round(float(np.median(f1[n] - f1[BASE])), 4),
                   "wins_vs_A": int((f1[n] > f1[BASE]).sum()), "losses_vs_A": int((f1[n] < f1[BASE]).sum())}
               for n in RULES}
    for n, s in summary.items():
        print(f"{n:36s} mean {s['mean']:.4f}  median diff {s['median_diff_vs_A']:+.4f}  "
              f"wins/losses vs A {s['wins_vs_A']}/{s['losses_vs_A']}")
    res = {"benchmark": "threshold_rules", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "rules": {n: {"fit_on": f, **kw} for n, (f, kw) in RULES.items()}, "base": BASE,
           "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
           "summary": summary, "runs": rows}
    from protloc.core.atomic import write_json

    write_json(args.out, res)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
