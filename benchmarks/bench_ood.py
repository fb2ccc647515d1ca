"""Out-of-distribution flags and the intensity rule, measured on a real trained run.

One command reruns everything (about 15 minutes on 2 busy CPU cores):

    python benchmarks/bench_ood.py                      # -> benchmarks/results/ood.json, docs/ood_scores.png

1. Data: ``protloc synth`` (128 px, default style) for training + validation and a test set,
   and test sets in other ``--style`` s (``protloc synth --style``, docs/synth.md).
2. Two runs of the default recipe, the same data and seed, ``--intensity auto`` (on 8-bit PNGs
   it records ``scale``: the numbers every run had so far) and ``--intensity percentile``. A
   third rule, ``auto`` decided per image (8-bit as stored, deeper data by percentiles), is read
   from the first run with its recorded rule changed: the training is byte-identical, only the
   reading of 16-bit files at prediction differs.
3. The intensity rule is **chosen on the validation images** (the holdout of fold 0) written
   three ways: the 8-bit PNGs, full-range 16-bit TIFFs (x 257) and dim 12-bit TIFFs
   (x 0.2 x 4095 / 255, a camera that uses a fifth of its range); the rule with the best mean
   macro F1 over the three wins; the **test** images are only reported.
4. Out of distribution, with the auto run: the threshold rule is fixed by the run's validation
   images (each fold's 99th percentile of held-out scores, :mod:`protloc.core.ood`). The parts
   of the score (pixel statistics, channel order, features) were chosen on *selection* inputs
   made from the validation images (channels swapped, empty fields, noise) and two styles
   (confocal-63x, spinning-disk): every subset of parts is shown on them. Reported on inputs
   that chose nothing: the test images (in distribution: the share flagged should be <= 2 %)
   and deliberately wrong inputs made from them (should be >= 90 %): channels swapped (R<->B,
   G<->B), empty fields (camera background and read noise only), uniform noise, and the other
   synth styles; with the share each part flags alone.

``--quick`` makes it a smoke test (tiny data, 1 epoch). Styles need ``protloc synth --style``
(branch synth-styles); set ``PROTLOC_SYNTH_PYTHONPATH`` to a source tree that has it when the
installed protloc does not (the styles are then skipped if neither has them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parents[1] / "docs"
STYLES = ("confocal-63x", "widefield-20x", "spinning-disk", "epi-saturated", "suspension")


def sh(cmd: list[str], *, env=None, log: Path | None = None) -> None:
    print("$ protloc " + " ".join(cmd), flush=True)
    full = [sys.executable, "-m", "protloc.cli.main", *cmd]
    with open(log, "w") if log else open(os.devnull, "w") as f:
        rc = subprocess.run(full, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"failed ({rc}): protloc {' '.join(cmd)}" + (f"\n{log.read_text()[-3000:]}" if log else ""))


def synth(out: Path, *, n_train: int, n_test: int, seed: int, style: str | None = None) -> Path | None:
    if (out / "synth.json").is_file():
        return out
    cmd = ["synth", str(out), "--n-train", str(n_train), "--n-test", str(n_test), "--seed", str(seed),
           "--size", "128", "--overwrite", "--no-progress"]
    env = None
    if style:
        cmd += ["--style", style]
        alt = os.environ.get("PROTLOC_SYNTH_PYTHONPATH")
        if alt:
            env = {**os.environ, "PYTHONPATH": alt}
        probe = subprocess.run([sys.executable, "-m", "protloc.cli.main", "synth", "--help"], env=env,
                               capture_output=True, text=True).stdout
        if "--style" not in probe:
            print(f"  (no `protloc synth --style` here: style {style} skipped)")
            return None
    sh(cmd, env=env)
    return out


def train(data: Path, out: Path, *, intensity: str, minutes: float, epochs: int | None, threads: int) -> dict:
    if not (out / "summary.json").is_file():
        cmd = ["train", "--data", str(data), "--out", str(out), "--intensity", intensity, "--max-minutes",
               str(minutes), "--threads", str(threads), "--overwrite", "--quiet"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        t0 = time.time()
        sh(cmd, log=out.parent / f"{out.name}.log")
        print(f"  trained in {time.time() - t0:.0f} s")
    return json.loads((out / "summary.json").read_text())


# --------------------------------------------------------------------------------------------
# inputs written the ways a microscope writes them
# --------------------------------------------------------------------------------------------
def write_variant(src: Path, ids, dst: Path, kind: str, *, seed: int = 0) -> Path:
    """``ids`` of the PNG folder ``src`` written to ``dst`` as ``kind``."""
    import tifffile
    from PIL import Image

    if dst.is_dir() and len(list(dst.iterdir())) == len(ids):
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for iid in ids:
        a = np.asarray(Image.open(src / f"{iid}.png").convert("RGB"))
        if kind == "png":
            Image.fromarray(a).save(dst / f"{iid}.png")
            continue
        if kind == "16bit":
            out = a.astype(np.uint16) * 257
        elif kind == "12bit-dim":
            out = np.round(a.astype(np.float64) * (0.2 * 4095 / 255)).astype(np.uint16)
        elif kind == "swap-rb":
            out = a[..., [2, 1, 0]]
        elif kind == "swap-gb":
            out = a[..., [0, 2, 1]]
        elif kind == "empty":  # the image's background level plus camera read noise, no cells
            bg = np.median(a.reshape(-1, 3), axis=0)
            out = np.clip(np.round(bg + rng.normal(0, 2.0, a.shape)), 0, 255).astype(np.uint8)
        elif kind == "noise":
            out = rng.integers(0, 256, a.shape).astype(np.uint8)
        else:
            raise ValueError(kind)
        if out.dtype == np.uint16:
            tifffile.imwrite(dst / f"{iid}.tif", np.moveaxis(out, -1, 0), photometric="minisblack")
        else:
            Image.fromarray(out).save(dst / f"{iid}.png")
    return dst


def predict(run: Path, images: Path, ids, labels: dict | None, *, threads: int) -> dict:
    """Macro F1 (run thresholds) and OOD scores of ``ids`` in ``images`` with ``run``."""
    from protloc.core.metrics import macro_f1
    from protloc.core.ood import image_stats  # noqa: F401 - (parts below)
    from protloc.data.table import load_table
    from protloc.inference.predictor import Predictor

    csv = images.parent / f"{images.name}.csv"
    pd.DataFrame({"Image": list(ids)}).to_csv(csv, index=False)
    pred = Predictor.from_run(run, threads=threads)
    table = load_table(csv, images, labels=False, channels=(0, 1, 2) if any(images.glob("*.tif")) else None)
    res = pred.predict_table(table, batch_size=64, channels_chosen=False)
    out = {"n": len(res.ids)}
    if labels is not None:
        schema = pred.preprocessing.schema
        y = schema.to_multihot([schema.parse(labels[i]) for i in res.ids])
        out["macro_f1"] = round(float(macro_f1(y, pred.threshold_rule.apply(res.probs))), 4)
    if res.ood_score is not None:
        out["ood_score"] = res.ood_score
    return out


def ood_parts(run: Path, images: Path, ids, *, threads: int) -> np.ndarray:
    """(N, 3) each part's score alone (pixels, channel order, features; over the shipped
    threshold), mean over the run's folds, for ``ids`` in ``images`` read as the run reads them."""
    import torch

    from protloc.core.ood import image_stats
    from protloc.inference.predictor import Predictor

    pred = Predictor.from_run(run, threads=threads)
    parts = []
    for s in range(0, len(ids), 64):
        batch = np.stack([pred.read_file(images / f"{i}.png" if (images / f"{i}.png").is_file()
                                         else images / f"{i}.tif") for i in ids[s:s + 64]])
        x = torch.from_numpy(pred.preprocessing.normalize(batch))
        with torch.inference_mode():
            parts.append(np.mean([det.parts(m.pooled(x).float().numpy(), image_stats(batch))
                                  for m, det in zip(pred.models, pred.ood)], axis=0))
    return np.concatenate(parts)


def subset_flags(parts: dict, val_key: str, subset, q: float) -> dict:
    """Flagged share per input when only the ``subset`` of parts makes the score (threshold
    recalibrated: its ``q`` quantile on the validation images)."""
    raw = {k: v[:, list(subset)].max(1) for k, v in parts.items()}
    thr = np.quantile(raw[val_key], q)
    return {k: flagged(r / thr) for k, r in raw.items() if k != val_key}


def flagged(scores) -> float:
    return round(float((np.asarray(scores) > 1).mean()), 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/protloc_bench_ood", help="data and runs (reused when present)")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--n-style", type=int, default=200, help="test images per other style")
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per run")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.n_style, args.minutes, args.epochs = 120, 40, 20, 1.0, 1
        args.work += "_quick"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    load = os.getloadavg()
    data = synth(work / "data", n_train=args.n_train, n_test=args.n_test, seed=0)
    styles = {s: synth(work / f"style_{s}", n_train=1, n_test=args.n_style, seed=1, style=s) for s in STYLES}
    runs = {"auto": work / "run_auto", "percentile": work / "run_percentile"}
    summaries = {k: train(data, r, intensity=k, minutes=args.minutes, epochs=args.epochs, threads=args.threads)
                 for k, r in runs.items()}
    recorded = json.loads((runs["auto"] / "preprocessing.json").read_text())["intensity"]["rule"]
    runs = {f"auto (records {recorded})": runs["auto"], "percentile": runs["percentile"],
            "auto per image": work / "run_auto_per_image"}  # the auto run's weights, read per image
    if not runs["auto per image"].is_dir():
        shutil.copytree(runs[f"auto (records {recorded})"], runs["auto per image"])
        pj = runs["auto per image"] / "preprocessing.json"
        d = json.loads(pj.read_text())
        d["intensity"]["rule"] = "auto"
        pj.write_text(json.dumps(d, indent=2))

    labels = dict(pd.read_csv(data / "train.csv", dtype=str).fillna("").values)
    labels.update(dict(pd.read_csv(data / "test_labels.csv", dtype=str).fillna("").values))
    splits = pd.read_csv(work / "run_auto" / "splits.csv", dtype={"Image": str})
    val_ids = splits.loc[splits["fold"] == 0, "Image"].tolist()
    test_ids = pd.read_csv(data / "test.csv", dtype=str)["Image"].tolist()
    variants = ("png", "16bit", "12bit-dim")

    # ---------------------------------------------------------------- intensity rule
    intensity: dict = {"choose_on": f"validation ({len(val_ids)} images)", "report_on": f"test ({len(test_ids)})"}
    for split, ids, src in (("validation", val_ids, data / "train"), ("test", test_ids, data / "test")):
        for v in variants:
            folder = write_variant(src, ids, work / "variants" / f"{split}_{v}", v)
            for rule, run in runs.items():
                r = predict(run, folder, ids, labels, threads=args.threads)
                intensity.setdefault(split, {}).setdefault(rule, {})[v] = r["macro_f1"]
                print(f"  intensity {rule:20s} {split:10s} {v:9s} macro F1 {r['macro_f1']:.3f}", flush=True)
    mean_val = {rule: float(np.mean(list(intensity["validation"][rule].values()))) for rule in runs}
    intensity["validation_mean_f1"] = {k: round(v, 4) for k, v in mean_val.items()}
    intensity["chosen"] = max(mean_val, key=mean_val.get)

    # ---------------------------------------------------------------- out of distribution
    from protloc.core.ood import PARTS
    from protloc.core.runfolder import RunFolder

    run = work / "run_auto"
    dets = RunFolder(run).ood()
    if dets is None:  # a run trained before this reference existed: fit it from the run's own data
        sh(["train", "--out", str(run), "--data", str(data), "--refit-ood", "--quiet"])
        dets = RunFolder(run).ood()
    q = dets[0].quantile
    ood: dict = {"rule": f"score > 1: above the {100 * q:g}th percentile of the held-out validation images' "
                         "scores (per fold, mean over folds)",
                 "calibration_images": int(sum(d.n_val_ for d in dets)),
                 "validation_flagged": flagged(np.concatenate([d.val_scores_ for d in dets])),
                 "parts": list(PARTS), "selection": {}, "inputs": {}}
    hist = {"validation": np.concatenate([d.val_scores_ for d in dets])}
    # selection: wrong inputs made from the VALIDATION images and two styles; the parts of the score
    # were chosen on these (every subset is shown); the inputs below ("inputs") are only reported
    sel_cases = [("validation", data / "train", val_ids, "png"),
                 ("validation, channels swapped R<->B", data / "train", val_ids, "swap-rb"),
                 ("validation, channels swapped G<->B", data / "train", val_ids, "swap-gb"),
                 ("validation, empty fields", data / "train", val_ids, "empty"),
                 ("uniform noise (selection seed)", data / "train", val_ids, "noise")]
    for s_ in ("confocal-63x", "spinning-disk"):
        if styles.get(s_) is not None:
            sid = pd.read_csv(styles[s_] / "test.csv", dtype=str)["Image"].tolist()
            sel_cases.append((f"style {s_}", styles[s_] / "test", sid, "png"))
    sel_parts = {}
    for name, src, ids, kind in sel_cases:
        folder = write_variant(src, ids, work / "variants" / ("sel_" + name.replace(" ", "_").replace("<->", "-")
                                                               .replace(",", "").replace("(", "").replace(")", "")),
                               kind, seed=11)
        sel_parts[name] = ood_parts(run, folder, ids, threads=args.threads)
    subsets = {" + ".join(PARTS[j] for j in sub): sub for sub in ((0,), (0, 1), (0, 2), (0, 1, 2), (1, 2), (2,))}
    for label, sub in subsets.items():
        ood["selection"][label] = subset_flags(sel_parts, "validation", sub, q)
        print(f"  selection {label:38s} " + " ".join(f"{v:.2f}" for v in ood["selection"][label].values()),
              flush=True)
    held_out_styles = [s_ for s_ in STYLES if s_ not in ("confocal-63x", "spinning-disk")]
    cases = [("test (in distribution)", data / "test", test_ids, "png", True)]
    cases += [(f"test written as {v}", data / "test", test_ids, v, True) for v in ("16bit", "12bit-dim")]
    cases += [(name, data / "test", test_ids, kind, False) for name, kind in
              (("channels swapped R<->B", "swap-rb"), ("channels swapped G<->B", "swap-gb"),
               ("empty fields", "empty"), ("uniform noise", "noise"))]
    for s_ in held_out_styles + ["confocal-63x", "spinning-disk"]:
        folder = styles.get(s_)
        if folder is not None:
            sid = pd.read_csv(folder / "test.csv", dtype=str)["Image"].tolist()
            cases.append((f"style {s_}" + ("" if s_ in held_out_styles else " (also in selection)"),
                          folder / "test", sid, "png", False))
    for name, src, ids, kind, in_dist in cases:
        folder = write_variant(src, ids, work / "variants" / f"ood_{name.replace(' ', '_').replace('<->', '-')}",
                               kind, seed=7)
        r = predict(run, folder, ids, None, threads=args.threads)
        sc = r["ood_score"]
        row = {"n": r["n"], "expected": "in distribution" if in_dist else "out of distribution",
               "flagged": flagged(sc), "median_score": round(float(np.median(sc)), 3)}
        parts = ood_parts(run, folder, ids[:300], threads=args.threads)
        row.update({f"flagged_by_{p_}_alone": flagged(parts[:, j]) for j, p_ in enumerate(PARTS)})
        ood["inputs"][name] = row
        hist[name] = sc
        print(f"  OOD {name:40s} flagged {row['flagged']:.3f} (median score {row['median_score']})", flush=True)
    wrong = [v["flagged"] for v in ood["inputs"].values() if v["expected"] == "out of distribution"]
    ood["goal_in_distribution_max_flagged"] = 0.02
    ood["goal_wrong_min_flagged"] = 0.90
    ood["test_flagged"] = ood["inputs"]["test (in distribution)"]["flagged"]
    ood["wrong_inputs_min_flagged"] = min(wrong) if wrong else None

    if not args.quick:
        from protloc.reports.report_plots import ood_scores

        fig = ood_scores({k: v for k, v in hist.items() if k in ("validation", "test (in distribution)",
                                                                   "channels swapped R<->B", "empty fields",
                                                                   "style widefield-20x", "style suspension")})
        fig.set_size_inches(8, 3.4)
        fig.savefig(DOCS / "ood_scores.png", dpi=90)

    result = {"command": " ".join(["python benchmarks/bench_ood.py", *sys.argv[1:]]),
              "data": {"train_and_validation": args.n_train, "test": args.n_test, "per_style": args.n_style,
                       "size": 128},
              "training": {k: {"val_macro_f1": round(s["val_macro_f1"], 4), "wall_s": s.get("wall_seconds")}
                           for k, s in summaries.items()},
              "intensity": intensity, "ood": ood, "wall_s": round(time.time() - t_all, 1),
              "load_avg_at_start": [round(v, 2) for v in load], "load_avg_at_end": [round(v, 2) for v in os.getloadavg()],
              "cpus": os.cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("ood_quick.json" if args.quick else "ood.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("training", "wall_s")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
