"""Transfer harness (issue 10): choose recipes on SELECTION styles, report them on HELD_OUT styles.

A recipe (a named set of ``protloc train`` flags) is trained on a training set (one
``protloc synth --style``, or a mix of styles) and scored on the test split of one or more
styles, exactly as a user runs it, through the CLI in subprocesses::

    protloc synth DATA --style S ...                      (once per dataset; cached)
    protloc train --data DATA --out RUN --max-minutes M [recipe flags]
    protloc thresholds RUN
    protloc predict RUN --data TEST --out pred.csv --tta d4
    protloc score --truth TEST/test_labels.csv --pred pred.csv --json score.json

**Never choose on what you test.** Recipes may be tuned on the SELECTION styles only; the
HELD_OUT styles (the most unlike the others, see docs/synth.md) are only ever reported. Every
result cell carries its test style's role, and the ranking column ("selection mean") averages
selection cells only.

Plans (``--plan``):

- ``selection``: train on each SELECTION style, test on every SELECTION style (within- and
  cross-style), and train on the SELECTION mix, test on each SELECTION style. Use these to choose.
- ``held-out``: train on each HELD_OUT style, test on it (the issue's acceptance: 3,000/1,000
  images, 15 minutes), and train on the SELECTION mix, test on each HELD_OUT style (an unseen
  style). Report these; never choose on them.
- ``all``: both. Or give ``--train`` (repeatable; ``a+b`` is a mix) and ``--test a,b``.

Examples::

    python benchmarks/bench_transfer.py --quick --train default --test default,widefield-20x
    python benchmarks/bench_transfer.py --plan selection --recipes default,native128
    python benchmarks/bench_transfer.py --plan held-out --recipes default,seed   # acceptance
    python benchmarks/bench_transfer.py --style-stats                            # how styles differ
    python benchmarks/bench_transfer.py --probe                                  # learnability + shift, cheap
    python benchmarks/bench_transfer.py --plan all --dry-run                     # list the jobs

Datasets are cached in ``--work`` (default ``$PROTLOC_BENCH_DIR`` or /tmp/protloc-transfer) under a
name that includes every synthesis parameter and a fingerprint of the renderer's source, so a
change to a style or to the renderer makes new data. Results: ``benchmarks/results/transfer*.json``
and a markdown table next to it. Jobs run one after another (2 cores); ``--parallel N`` runs N at
once with the cores split between them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: styles recipes may be chosen on
SELECTION = ["default", "spinning-disk", "epi-saturated", "suspension", "hcs-confocal-20x"]
#: styles that are only ever reported: never choose a recipe, default or threshold on them. They
#: are the two most unlike the others by pixel statistics (``--style-stats``: mean distance 7.0
#: and 4.8 vs 3.5-4.7) and the magnification/density extremes: 40-80 small cells at 20x under
#: haze and camera offset, and 2-6 large cells at 63x with crisp, high-signal detail.
HELD_OUT = ["widefield-20x", "confocal-63x"]

#: named recipes: flags appended to ``protloc train`` (the preset's defaults fill in the rest)
RECIPES: dict[str, list[str]] = {
    "default": [],  # what `protloc train` does today
    "seed": ["--preset", "seed"],  # the reference notebook's recipe (the acceptance baseline)
    "native128": ["--size", "128", "--freeze-blocks", "0", "--epochs", "8"],  # issue 10's two flags
    # the default before issue 10 (96 px, stem + 3 stages frozen, 12 epochs)
    "old-default": ["--size", "96", "--freeze-blocks", "3", "--epochs", "12"],
    "pseudo": ["--unlabeled", "{test_images}"],  # the default + pseudo-labels on the test images
}

FULL = dict(n_train=3000, n_test=1000, minutes=15.0)
QUICK = dict(n_train=300, n_test=100, minutes=1.5)


# --------------------------------------------------------------------------- helpers
def protloc_cmd() -> list[str]:
    """The ``protloc`` entry point of this interpreter (what users run), else ``python -m``."""
    exe = Path(sys.executable).parent / "protloc"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    return [sys.executable, "-W", "ignore::RuntimeWarning", "-m", "protloc.cli.main"]


def run_cli(args: list[str], log: Path, *, check: bool = True) -> float:
    """Run ``protloc ARGS`` with its output in ``log``; return wall seconds."""
    cmd = protloc_cmd() + [str(a) for a in args]
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ protloc " + shlex.join(cmd[len(protloc_cmd()):]) + "\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    sec = time.perf_counter() - t0
    if check and rc:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"protloc {args[0]} failed (exit {rc}); log {log}:\n{tail}")
    return sec


def renderer_fingerprint() -> str:
    """Hash of what makes the pixels (renderer source, every style's parameters, the random style's
    code): a change there makes new cached data; a change to the statistics code does not."""
    import inspect

    import protloc.synth.dataset as d
    import protloc.synth.patterns as p
    import protloc.synth.styles as s

    h = hashlib.sha256()
    for mod in (d, p):
        h.update(Path(mod.__file__).read_bytes())
    h.update(json.dumps({k: v.describe() for k, v in s.STYLES.items()}, sort_keys=True).encode())
    for fn in (s.random_style, s._wide, s._any_mix, s.pick):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:10]


def split_spec(spec: str) -> list[str]:
    """'a+b' -> ['a', 'b'] (a training mix); 'a' -> ['a']."""
    return [s.strip() for s in spec.split("+") if s.strip()]


def style_seed(base: int, spec: str) -> int:
    """A seed per style spec, so styles never share image ids or label draws."""
    return int(base) + zlib.crc32(spec.encode()) % 100000


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- datasets
def dataset_dir(work: Path, spec: str, *, n_train: int, n_test: int, size: int, label_noise: float,
                difficulty: float, seed: int, fingerprint: str) -> Path:
    params = dict(style=spec, n_train=n_train, n_test=n_test, size=size, label_noise=label_noise,
                  difficulty=difficulty, seed=style_seed(seed, spec), renderer=fingerprint)
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return work / "data" / f"{spec.replace('+', '_')}-{n_train}-{n_test}-{size}px-{key}"


def ensure_dataset(path: Path, spec: str, *, n_train: int, n_test: int, size: int, label_noise: float,
                   difficulty: float, seed: int, workers: int) -> dict:
    """Make the dataset with ``protloc synth`` unless a complete copy is cached; return its info."""
    if (path / "synth.json").is_file() and (path / "train.csv").is_file():
        info = json.loads((path / "synth.json").read_text())
        return {"path": str(path), "cached": True, "seconds": info.get("seconds"),
                "images_per_s": info.get("images_per_s")}
    print(f"synthesizing {spec}: {n_train}+{n_test} images -> {path}", flush=True)
    sec = run_cli(["synth", path, "--n-train", n_train, "--n-test", n_test, "--size", size,
                   "--style", ",".join(split_spec(spec)), "--seed", style_seed(seed, spec),
                   "--label-noise", label_noise, "--difficulty", difficulty, "--workers", workers,
                   "--overwrite", "--no-progress"], path.parent / f"{path.name}.log")
    info = json.loads((path / "synth.json").read_text())
    return {"path": str(path), "cached": False, "seconds": round(sec, 1), "images_per_s": info.get("images_per_s")}


def noise_ceiling(data: Path) -> float:
    """Macro F1 of the noisy training labels against the clean ones (what label noise costs)."""
    import pandas as pd

    from protloc.core.schema import get_schema
    from protloc.reports.evaluate import score_frames

    clean = pd.read_csv(data / "train_clean_labels.csv", dtype=str)
    noisy = pd.read_csv(data / "train.csv", dtype=str).rename(columns={"Label": "Predicted"})
    return round(score_frames(clean, noisy, schema=get_schema("ghent10"))["macro_f1"], 4)


# --------------------------------------------------------------------------- plan
def role(style: str) -> str:
    return "held-out" if style in HELD_OUT else "selection" if style in SELECTION else "other"


def make_plan(plan: str | None, trains: list[str], tests: list[str]) -> list[tuple[str, list[str]]]:
    """[(train spec, [test styles])] for a named plan or explicit --train/--test."""
    mix = "+".join(SELECTION)
    if trains:
        return [(t, tests or split_spec(t)) for t in trains]
    jobs: list[tuple[str, list[str]]] = []
    if plan in ("selection", "all"):
        jobs += [(s, list(SELECTION)) for s in SELECTION] + [(mix, list(SELECTION))]
    if plan in ("held-out", "all"):
        jobs += [(h, [h]) for h in HELD_OUT] + [(mix, list(HELD_OUT))]
    merged: dict[str, list[str]] = {}
    for t, ts in jobs:  # one training per train spec, tested on the union of its test styles
        merged.setdefault(t, [])
        merged[t] += [x for x in ts if x not in merged[t]]
    return list(merged.items())


def check_plan(jobs, recipes: dict[str, list[str]]) -> None:
    from protloc.synth.styles import STYLES, style_names

    for t, ts in jobs:
        for s in split_spec(t) + ts:
            if s not in STYLES and s != "random":
                raise SystemExit(f"error: unknown style {s!r}; styles: {', '.join(style_names())}")
        for s in ts:
            if s in split_spec(t) and len(split_spec(t)) > 1:
                print(f"note: test style {s} is part of the training mix {t} (its test split is unseen)")


# --------------------------------------------------------------------------- one job
def run_job(recipe: str, flags: list[str], train_spec: str, tests: list[str], *, data: dict, work: Path,
            minutes: float, threads: int | None, extra: list[str], tta: str, reuse: bool) -> dict:
    tr = Path(data[train_spec]["path"])
    job_key = hashlib.sha256(json.dumps([recipe, flags, str(tr), minutes, extra, threads]).encode()).hexdigest()[:8]
    run = work / "runs" / f"{recipe}__{train_spec.replace('+', '_')}__{job_key}"
    log = run.parent / f"{run.name}.log"
    thr = ["--threads", str(threads)] if threads else []
    res = {"recipe": recipe, "flags": flags, "train": train_spec, "train_styles": split_spec(train_spec),
           "train_data": str(tr), "run": str(run), "max_minutes": minutes, "log": str(log)}
    reused = reuse and (run / "summary.json").is_file() and (run / "thresholds.json").is_file() and \
        (run / "job.json").is_file() and json.loads((run / "job.json").read_text()).get("key") == job_key
    res["reused_run"] = bool(reused)
    if not reused:
        res["load_before_train"] = loadavg()
        t0 = time.perf_counter()
        test_images = Path(data[tests[0]]["path"]) / "test"  # --unlabeled {test_images}: the first test style's
        run_cli(["train", "--data", tr, "--out", run, "--max-minutes", minutes, "--overwrite", "--quiet",
                 *[f.replace("{test_images}", str(test_images)) for f in flags], *thr, *extra], log)
        res["train_wall_s"] = round(time.perf_counter() - t0, 1)
        res["load_after_train"] = loadavg()
        run_cli(["thresholds", run], log)
        (run / "job.json").write_text(json.dumps({"key": job_key, "recipe": recipe, "flags": flags}) + "\n")
    summ = json.loads((run / "summary.json").read_text())
    folds = summ.get("fold_summaries", [])
    res.update({"train_minutes_used": round(summ.get("wall_seconds", 0) / 60, 2),
                "budget_used": round(summ.get("wall_seconds", 0) / 60 / minutes, 3) if minutes else None,
                "epochs": [f.get("epochs_run") for f in folds], "best_epoch": [f.get("best_epoch") for f in folds],
                "stopped_by_time_budget": [f.get("stopped_by_time_budget") for f in folds],
                "oof_macro_f1": round(summ.get("val_macro_f1", float("nan")), 4)})
    res["tests"] = {}
    for s in tests:
        te = Path(data[s]["path"])
        pred, score = run / f"pred_{s}.csv", run / f"score_{s}.json"
        load0 = loadavg()
        sec = run_cli(["predict", run, "--data", te, "--out", pred, "--tta", tta, "--no-progress", *thr], log)
        run_cli(["score", "--truth", te / "test_labels.csv", "--pred", pred, "--json", score], log)
        sc = json.loads(score.read_text())
        res["tests"][s] = {"role": role(s), "macro_f1": round(sc["macro_f1"], 4),
                           "per_class_f1": {pc["class"]: round(pc["f1"], 4) for pc in sc["per_class"]},
                           "predict_s": round(sec, 1), "load_before_predict": load0, "tta": tta}
    return res


# --------------------------------------------------------------------------- report
def selection_mean(r: dict) -> float | None:
    """Mean macro F1 over a result's SELECTION test cells: the only number to rank recipes by."""
    v = [t["macro_f1"] for t in r["tests"].values() if t["role"] == "selection"]
    return round(sum(v) / len(v), 4) if v else None


def markdown(res: dict) -> str:
    tests = sorted({s for r in res["results"] for s in r["tests"]}, key=lambda s: (role(s) != "selection", s))
    head = ["recipe", "train on", *[f"{s} ({'H' if role(s) == 'held-out' else 'S'})" for s in tests],
            "selection mean", "train min", "epochs"]
    lines = [f"Test macro F1 (`predict --tta {res['tta']}` after `thresholds`); {res['n_train']} train / "
             f"{res['n_test']} test images per style, {res['size']} px, label noise {res['label_noise']}, "
             f"`--max-minutes {res['minutes']}`. (S) selection style, (H) held-out style: never choose on (H) "
             f"columns. Machine: {res['cores']} cores, load {res['load_at_start']} at start, "
             f"{res['load_at_end']} at end." + (" **Smoke run: tiny data and budget, figures mean nothing.**"
                                                 if res.get("quick") else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["results"]:
        cells = [f"{r['tests'][s]['macro_f1']:.3f}" if s in r["tests"] else "" for s in tests]
        sm = selection_mean(r)
        lines.append("| " + " | ".join([r["recipe"], r["train"], *cells, "" if sm is None else f"{sm:.3f}",
                                        f"{r['train_minutes_used']:.1f}", ",".join(map(str, r["epochs"]))]) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- style statistics
def style_stats(args) -> dict:
    """Per-style pixel statistics, distances between styles and synthesis speed (docs/synth.md)."""
    import numpy as np

    from protloc.synth.dataset import image_rng, sample_label_sets, synth_image
    from protloc.synth.styles import image_stats, style_names

    names = style_names()
    sets = sample_label_sets(args.stats_n, np.random.default_rng(0))
    per: dict[str, dict] = {}
    raw: dict[str, dict] = {}
    for st in names:
        synth_image(sets[0], rng=image_rng(0, 0), style=st)  # warm-up
        rows, t0 = [], time.process_time()
        imgs = [synth_image(s, rng=image_rng(7, i), style=st) for i, s in enumerate(sets)]
        ms = 1000 * (time.process_time() - t0) / len(sets)
        rows = [image_stats(im) for im in imgs]
        raw[st] = {k: np.array([r[k] for r in rows], float) for k in rows[0]}
        per[st] = {k: round(float(v.mean()), 4) for k, v in raw[st].items()}
        per[st]["render_ms_cpu"] = round(ms, 2)
        print(st, per[st], flush=True)
    keys = list(raw[names[0]])
    pooled = {k: float(np.sqrt(np.mean([raw[s][k].var() for s in names]))) + 1e-9 for k in keys}
    z = {s: np.array([per[s][k] / pooled[k] for k in keys]) for s in names}
    named = [s for s in names if s != "random"]
    dist = {a: {b: round(float(np.linalg.norm(z[a] - z[b])), 2) for b in named} for a in names}
    for s in names:
        others = [dist[s][b] for b in named if b != s]
        per[s]["mean_distance"] = round(float(np.mean(others)), 2)
        per[s]["nearest_distance"] = round(float(np.min(others)), 2)
    speed = {}
    if args.speed_n:
        with_tmp = Path(args.work) / "speed"
        for st in names:
            out = with_tmp / st
            load0 = loadavg()
            sec = run_cli(["synth", out, "--n-train", args.speed_n, "--n-test", 0, "--style", st, "--workers", 2,
                           "--overwrite", "--no-progress"], with_tmp / "synth.log")
            cpu = json.loads((out / "synth.json").read_text())["render_cpu_seconds"]  # the workers' render + PNG
            speed[st] = {"images": args.speed_n, "wall_s": round(sec, 1), "images_per_s": round(args.speed_n / sec, 1),
                         "worker_cpu_ms_per_image": round(1000 * cpu / args.speed_n, 2),
                         "s_per_4000_on_2_idle_cores": round(4000 * cpu / args.speed_n / 2, 1), "load_before": load0}
            print(st, speed[st], flush=True)
    return {"stats": per, "distance": dist, "pooled_sd": {k: round(v, 4) for k, v in pooled.items()},
            "synth_cli_2_workers": speed, "n_images": args.stats_n}


def stats_markdown(s: dict) -> str:
    keys = ["nuclei", "nucleus_px", "nucleus_area", "cell_area", "nucleus_share", "background", "hf_energy", "green_p99", "saturated",
            "render_ms_cpu", "mean_distance", "nearest_distance"]
    lines = ["| style | " + " | ".join(keys) + " | CLI images/s (2 workers, wall) | CLI worker CPU ms/image | "
             "s per 4,000 on 2 idle cores |", "|" + "---|" * (len(keys) + 4)]
    for st, v in s["stats"].items():
        sp = s["synth_cli_2_workers"].get(st, {})
        lines.append(f"| {st} | " + " | ".join(f"{v[k]:.3g}" for k in keys) + " | " + " | ".join(
            str(sp.get(k, "")) for k in ("images_per_s", "worker_cpu_ms_per_image", "s_per_4000_on_2_idle_cores")) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- linear probe
def _load_split(data: Path, split: str):
    import numpy as np
    import pandas as pd
    from PIL import Image

    csv = data / ("train.csv" if split == "train" else "test_labels.csv")
    t = pd.read_csv(csv, dtype=str).fillna("")
    y = np.zeros((len(t), 10), np.float32)
    for i, lab in enumerate(t["Label"]):
        y[i, [int(c) for c in lab.split()]] = 1
    x = np.stack([np.asarray(Image.open(data / split / f"{iid}.png").convert("RGB")) for iid in t["Image"]])
    return x, y


def _features(x, batch: int = 64):
    """Frozen ImageNet EfficientNet-Lite0 (offline weights): avg- and max-pooled feature maps of
    the stride 8, 16 and 32 stages (max pooling of the finer ones keeps small structures)."""
    import numpy as np
    import torch

    from protloc.models.network import ModelSpec, build_model

    net = build_model(ModelSpec("tf_efficientnet_lite0"), pretrained="offline").eval()
    mean = x.reshape(-1, 3).mean(0) / 255
    std = x.reshape(-1, 3).std(0) / 255 + 1e-3
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            t = torch.from_numpy((x[i:i + batch] / 255 - mean) / std).float().permute(0, 3, 1, 2)
            mids = net.backbone.forward_intermediates(t, indices=[2, 3, 4], intermediates_only=True)
            out.append(torch.cat([f.mean((2, 3)) for f in mids] + [f.amax((2, 3)) for f in mids], 1).numpy())
    return np.concatenate(out)


def probe(args, work: Path, cores: int) -> dict:
    """Learnability and domain shift, cheaply: a linear probe on frozen features per style.

    For every style a logistic regression per class is fitted on its training features
    (thresholds from 3-fold out-of-fold predictions) and scored on every style's test split:
    the diagonal says each class carries learnable signal in each style, the off-diagonal how
    much a probe trained on one style loses on another. A proxy, not a recipe measurement.
    """
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.preprocessing import StandardScaler

    from protloc.core.metrics import macro_f1
    from protloc.synth.styles import STYLES

    torch.set_num_threads(max(1, min(cores, 2)))
    styles = [s for s in (args.test.split(",") if args.test else STYLES) if s]
    n_train, n_test = args.n_train or 1200, args.n_test if args.n_test is not None else 400
    fp = renderer_fingerprint()
    feats = {}
    for st in styles:
        path = dataset_dir(work, st, n_train=n_train, n_test=n_test, size=args.size, label_noise=args.label_noise,
                           difficulty=args.difficulty, seed=args.seed, fingerprint=fp)
        ensure_dataset(path, st, n_train=n_train, n_test=n_test, size=args.size, label_noise=args.label_noise,
                       difficulty=args.difficulty, seed=args.seed, workers=min(2, cores))
        t0 = time.perf_counter()
        feats[st] = {sp: (_features(x), y) for sp, (x, y) in
                     ((sp, _load_split(path, sp)) for sp in ("train", "test"))}
        print(f"features {st}: {time.perf_counter() - t0:.0f} s", flush=True)
    from protloc.core.schema import GHENT10

    res = {"styles": styles, "n_train": n_train, "n_test": n_test, "macro_f1": {}, "per_class_f1": {}}
    for a in styles:
        xa, ya = feats[a]["train"]
        sc = StandardScaler().fit(xa)
        xa = sc.transform(xa)
        models, thr = [], np.full(10, 0.5)
        for c in range(10):
            lr = LogisticRegression(C=0.05, max_iter=300)
            oof = cross_val_predict(lr, xa, ya[:, c], cv=3, method="predict_proba")[:, 1]
            grid = np.linspace(0.05, 0.95, 19)
            thr[c] = grid[int(np.argmax([macro_f1(ya[:, [c]], (oof >= g)[:, None], zero_division="zero")
                                         for g in grid]))]
            models.append(lr.fit(xa, ya[:, c]))
        res["macro_f1"][a] = {}
        for b in styles:
            xb, yb = feats[b]["test"]
            p = np.stack([m.predict_proba(sc.transform(xb))[:, 1] for m in models], 1)
            pred = p >= thr
            res["macro_f1"][a][b] = round(float(macro_f1(yb, pred, zero_division="zero")), 4)
            if a == b:
                res["per_class_f1"][a] = {GHENT10[c]: round(float(macro_f1(yb[:, [c]], pred[:, [c]],
                                                                            zero_division="zero")), 4)
                                          for c in range(10)}
        print(f"probe trained on {a}: " + ", ".join(f"{b} {v:.3f}" for b, v in res["macro_f1"][a].items()), flush=True)
    return res


def probe_markdown(r: dict) -> str:
    st = r["styles"]
    lines = ["Linear probe (frozen ImageNet EfficientNet-Lite0 features + logistic regression per class), "
             f"{r['n_train']} train / {r['n_test']} test images per style: test macro F1, rows = trained on, "
             "columns = tested on.", "", "| trained on \\ tested on | " + " | ".join(st) + " |",
             "|" + "---|" * (len(st) + 1)]
    for a in st:
        lines.append(f"| {a} | " + " | ".join(f"{r['macro_f1'][a][b]:.3f}" for b in st) + " |")
    classes = list(next(iter(r["per_class_f1"].values())))
    lines += ["", "Per class F1 when trained and tested on the same style:", "",
              "| style | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for a in st:
        lines.append(f"| {a} | " + " | ".join(f"{r['per_class_f1'][a][c]:.2f}" for c in classes) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", choices=("selection", "held-out", "all"), default=None,
                    help="named set of jobs (default: selection, unless --train is given)")
    ap.add_argument("--train", action="append", default=[],
                    help="training set: a style or a mix 'a+b' (repeatable); overrides --plan")
    ap.add_argument("--test", default="", help="comma list of test styles for --train (default: the train styles)")
    ap.add_argument("--recipes", default="default", help="comma list of names from RECIPES (or --recipe)")
    ap.add_argument("--recipe", action="append", default=[], help="extra recipe NAME='FLAGS', e.g. "
                    "\"r128='--size 128 --freeze-blocks 0'\"")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None, help="--max-minutes per training")
    ap.add_argument("--size", type=int, default=128, help="synthetic image size")
    ap.add_argument("--label-noise", type=float, default=0.03)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tta", default="d4", choices=("none", "flip", "d4"))
    ap.add_argument("--train-args", default="", help="extra flags for every protloc train")
    ap.add_argument("--parallel", type=int, default=1, help="jobs at once (cores are split between them)")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs of identical jobs in --work")
    ap.add_argument("--work", default=os.environ.get("PROTLOC_BENCH_DIR", "/tmp/protloc-transfer"))
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/transfer[_quick].json)")
    ap.add_argument("--dry-run", action="store_true", help="print the datasets and jobs, run nothing")
    ap.add_argument("--style-stats", action="store_true", help="measure how the styles differ, then stop")
    ap.add_argument("--stats-n", type=int, default=200, help="images per style for --style-stats")
    ap.add_argument("--speed-n", type=int, default=1000, help="images per style for the synth speed (0: skip)")
    ap.add_argument("--probe", action="store_true", help="linear-probe learnability and shift matrix over "
                    "the named styles (or --test a,b), 1200/400 images unless --n-train/--n-test, then stop")
    args = ap.parse_args(argv)
    command = "python benchmarks/bench_transfer.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    work = Path(args.work)
    cores = len(os.sched_getaffinity(0))

    def measure(fn, default_name: str, to_markdown) -> dict:  # a one-off study: JSON + markdown, then stop
        from protloc.core.atomic import write_json, write_text

        load0 = loadavg()
        r = fn()
        r.update({"command": command, "cores": cores, "load_at_start": load0, "load_at_end": loadavg()})
        out = Path(args.out or RESULTS / default_name)
        write_json(out, r)
        write_text(out.with_suffix(".md"), to_markdown(r))
        print(to_markdown(r) + f"wrote {out} and {out.with_suffix('.md')}")
        return r

    if args.style_stats:
        return measure(lambda: style_stats(args), "transfer_styles.json", stats_markdown)
    if args.probe:
        return measure(lambda: probe(args, work, cores), "transfer_probe.json", probe_markdown)

    size_defaults = QUICK if args.quick else FULL
    n_train = args.n_train or size_defaults["n_train"]
    n_test = args.n_test if args.n_test is not None else size_defaults["n_test"]
    minutes = args.minutes or size_defaults["minutes"]
    recipes = {}
    for name in [r for r in args.recipes.split(",") if r]:
        if name not in RECIPES and not any(x.startswith(name + "=") for x in args.recipe):
            raise SystemExit(f"error: unknown recipe {name!r}; known: {', '.join(RECIPES)} (or add --recipe NAME=FLAGS)")
        if name in RECIPES:
            recipes[name] = RECIPES[name]
    for r in args.recipe:
        name, _, flags = r.partition("=")
        recipes[name] = shlex.split(flags)
    jobs = make_plan(args.plan or (None if args.train else "selection"), args.train,
                     [t for t in args.test.split(",") if t])
    check_plan(jobs, recipes)
    fp = renderer_fingerprint()
    specs = list(dict.fromkeys([t for t, _ in jobs] + [s for _, ts in jobs for s in ts]))
    opts = dict(n_train=n_train, size=args.size, label_noise=args.label_noise, difficulty=args.difficulty,
                seed=args.seed)
    paths = {s: dataset_dir(work, s, n_test=0 if "+" in s else n_test, fingerprint=fp, **opts) for s in specs}
    held = sorted({s for _, ts in jobs for s in ts if role(s) == "held-out"})
    print(f"SELECTION styles (recipes may be chosen on these): {', '.join(SELECTION)}")
    print(f"HELD_OUT styles (report only, never choose on them): {', '.join(HELD_OUT)}")
    if held:
        print(f"this run tests on held-out styles {', '.join(held)}: its numbers must not choose anything")
    for r in recipes:
        for t, ts in jobs:
            print(f"job: recipe {r} [{shlex.join(recipes[r])}] train {t} -> test {', '.join(ts)}")
    if args.dry_run:
        for s, p in paths.items():
            print(f"dataset {s}: {p}")
        return {"jobs": jobs, "recipes": recipes, "datasets": {s: str(p) for s, p in paths.items()}}

    res = {"command": command, "quick": bool(args.quick), "selection": SELECTION, "held_out": HELD_OUT,
           "n_train": n_train, "n_test": n_test, "size": args.size, "label_noise": args.label_noise,
           "difficulty": args.difficulty, "seed": args.seed, "minutes": minutes, "tta": args.tta,
           "renderer": fp, "cores": cores, "parallel": args.parallel, "load_at_start": loadavg(),
           "recipes": recipes, "datasets": {}, "results": []}
    for s in specs:  # data first, one after another (synthesis already uses both cores)
        res["datasets"][s] = ensure_dataset(paths[s], s, n_test=0 if "+" in s else n_test, workers=min(2, cores),
                                            **{k: v for k, v in opts.items()})
        if "+" not in s:
            res["datasets"][s]["noise_ceiling_macro_f1"] = noise_ceiling(paths[s])
    threads = max(1, cores // args.parallel) if args.parallel > 1 else None
    todo = [(r, t, ts) for r in recipes for t, ts in jobs]
    kw = dict(data=res["datasets"], work=work, minutes=minutes, threads=threads,
              extra=shlex.split(args.train_args), tta=args.tta, reuse=args.reuse)
    out = Path(args.out or RESULTS / ("transfer_quick.json" if args.quick else "transfer.json"))

    def one(job):
        r, t, ts = job
        print(f"start: {r} on {t}", flush=True)
        out_ = run_job(r, recipes[r], t, ts, **kw)
        print(f"done: {r} on {t}: " + ", ".join(f"{s} {v['macro_f1']:.3f} ({v['role']})"
                                                for s, v in out_["tests"].items())
              + f"; {out_['train_minutes_used']} min, epochs {out_['epochs']}", flush=True)
        return out_

    from protloc.core.atomic import write_json, write_text

    if args.parallel > 1:
        with ThreadPoolExecutor(max_workers=args.parallel) as ex:
            res["results"] = list(ex.map(one, todo))
    else:
        for job in todo:
            res["results"].append(one(job))
            write_json(out, res)  # partial results survive an interrupted campaign
    res["load_at_end"] = loadavg()
    write_json(out, res)
    write_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res) + f"wrote {out} and {out.with_suffix('.md')}")
    return res


if __name__ == "__main__":
    main()
