"""Tiny on-disk fixtures shared by the tests (no dependency on ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from protloc.core.schema import get_schema


def tiny_image(labels, *, size=32, rng, channels=3) -> np.ndarray:
    """A cheap image whose green channel depends on its labels (learnable, not realistic)."""
    img = rng.integers(0, 30, (size, size, channels)).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k in labels:
        cy, cx = (k * 7) % size, (k * 13) % size
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (size // 6) ** 2
        img[..., 1][blob] = 200
    img[..., 2][(yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 4) ** 2] = 120
    return img


def make_tiny_dataset(root: Path, *, n=40, size=32, fmt="rgb", seed=0, n_classes=10,
                      channels=("red", "green", "blue")) -> tuple[Path, Path]:
    """Write ``root/train.csv`` + ``root/train/`` in the given format; return (csv, images)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    img_dir = root / "train"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = rng.integers(1, 3)
        labels = sorted(set(int(c) for c in rng.choice(n_classes, k, replace=False)) | {i % n_classes})
        iid = str(1000 + i)
        img = tiny_image(labels, size=size, rng=rng, channels=len(channels))
        if fmt == "rgb":
            Image.fromarray(img[..., :3]).save(img_dir / f"{iid}.png")
        elif fmt == "hpa-channels":
            for c, name in enumerate(channels):
                Image.fromarray(img[..., c]).save(img_dir / f"{iid}_{name}.png")
        elif fmt == "tiff":
            import tifffile

            tifffile.imwrite(img_dir / f"{iid}.tif", np.moveaxis(img, -1, 0).astype(np.uint16) * 257)
        rows.append((iid, " ".join(map(str, labels))))
    csv = root / "train.csv"
    pd.DataFrame(rows, columns=["Image", "Label"]).to_csv(csv, index=False)
    return csv, img_dir


def make_fake_run(root: Path, *, n=40, size=32, seed=0, backbone="test_resnet", folds=1) -> Path:
    """A run folder with an *untrained* model and plausible OOF probabilities.

    For tests of thresholds/predict/report/web that must not depend on training.
    """
    import torch

    from protloc.core.atomic import write_csv, write_json
    from protloc.models.network import ModelSpec, build_model, save_weights
    from protloc.core.preprocessing import Preprocessing
    from protloc.core.runfolder import RunFolder

    root = Path(root)
    schema = get_schema("ghent10")
    run = RunFolder(root)
    pre = Preprocessing(fmt="rgb", channels=("red", "green", "blue"), size=size,
                        mean=(0.05, 0.2, 0.1), std=(0.1, 0.3, 0.2), schema=schema)
    pre.save(run.preprocessing_json)
    write_json(run.schema_json, schema.to_dict())
    spec = ModelSpec(backbone=backbone, in_chans=3, num_classes=schema.n_classes, dropout=0.0)
    write_json(run.model_json, spec.to_dict())
    torch.manual_seed(seed)
    for f in range(folds):
        save_weights(build_model(spec), run.model_path(f))
    rng = np.random.default_rng(seed)
    y = np.zeros((n, schema.n_classes), np.uint8)
    for i in range(n):
        y[i, rng.choice(schema.n_classes, rng.integers(1, 3), replace=False)] = 1
    probs = np.clip(0.6 * y + rng.normal(0.2, 0.15, y.shape), 0, 1)
    ids = [str(1000 + i) for i in range(n)]
    oof = pd.DataFrame(probs, columns=list(schema.classes))
    oof.insert(0, "Label", [schema.format(np.flatnonzero(r)) for r in y])
    oof.insert(0, "fold", [i % folds for i in range(n)])
    oof.insert(0, "Image", ids)
    write_csv(run.oof_csv, oof)
    write_csv(run.metrics_csv, pd.DataFrame({"fold": [0, 0], "epoch": [0, 1], "train_loss": [0.7, 0.5],
                                             "val_loss": [0.69, 0.6], "val_macro_f1": [0.2, 0.3]}))
    write_json(run.summary_json, {"val_macro_f1": 0.3, "folds": folds})
    run.config_yaml.write_text(f"model: {backbone}\nsize: {size}\n")
    return root


def start_server(app, **config):
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a daemon thread.

    Returns ``(server, thread, url)``; stop with ``server.should_exit = True``.
    """
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.05)
    return server, t, f"http://127.0.0.1:{port}"


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for MASTER_PORT of simulated launchers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(cmd, envs, *, timeout: float = 240):
    """Start ``cmd`` once per environment in ``envs`` at the same time (as srun/torchrun start
    ranks); wait for all; returns ``(pids, [(stdout, stderr)])`` and asserts every exit code is 0."""
    import subprocess

    procs = [subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in envs]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [p.pid for p in procs], outs
