"""``protloc report`` on 500 out-of-fold images: goal under 30 s on CPU (issue #6), HTML < 10 MB.

Builds a fake run (untrained ``test_resnet``, plausible OOF probabilities, 2 folds of training
curves) over ``--n`` synthetic 128 px images next to it, then times :func:`protloc.reports.report.build_report`
(figures, error galleries, Grad-CAM examples; no prediction, as for ``protloc report RUN``) and
the file size.

    python benchmarks/bench_report.py [--n 500] [--size 128] [--workdir DIR]

Prints the figures and writes ``benchmarks/results/report.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from protloc.core.atomic import write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    import pandas as pd
    from helpers import make_fake_run, make_tiny_dataset

    from protloc.reports.report import build_report

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_report_"))
    make_tiny_dataset(work / "data", n=args.n, size=args.size)  # OUT/data/train next to OUT/run
    run = make_fake_run(work / "run", n=args.n, size=args.size, folds=2)
    epochs = range(8)
    pd.DataFrame({"fold": [f for f in (0, 1) for _ in epochs], "epoch": [e for _ in (0, 1) for e in epochs],
                  "train_loss": [0.7 / (1 + e) for _ in (0, 1) for e in epochs],
                  "val_loss": [0.7 / (1 + 0.7 * e) for _ in (0, 1) for e in epochs],
                  "val_macro_f1": [0.1 + 0.05 * e for _ in (0, 1) for e in epochs]}).to_csv(run / "metrics.csv",
                                                                                         index=False)
    t0 = time.perf_counter()
    page = build_report(run)
    t_build = time.perf_counter() - t0
    out = page.save(run / "report.html")
    t_total = time.perf_counter() - t0
    res = {"n_images": args.n, "size": args.size, "build_seconds": round(t_build, 2),
           "total_seconds": round(t_total, 2), "html_mb": round(out.stat().st_size / 1e6, 2),
           "embedded_images": out.read_text().count("data:image/png;base64,"), "goal_seconds": 30,
           "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "load_avg_1min": round(os.getloadavg()[0], 2)}
    print(res)
    write_json(ROOT / "benchmarks" / "results" / "report.json", res)


if __name__ == "__main__":
    main()
