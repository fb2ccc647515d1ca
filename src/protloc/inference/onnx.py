"""Export a run's fold ensemble (or one fold) to ONNX, and load it back with onnxruntime.

The ONNX graph
--------------
input ``input``
    float32 (batch, C, H, W), **already normalised**: ``(uint8 / 255 - mean) / std`` per channel,
    channels in the run's order, H = W = the run's size. Batch is dynamic.
    (:meth:`protloc.core.preprocessing.Preprocessing.normalize` does exactly this.)
output ``probs``
    float32 (batch, n_classes): sigmoid probabilities averaged over the exported folds.
output ``fold_probs``
    float32 (batch, n_folds, n_classes): each fold's probabilities (for ``merge='max'``).
output ``features``
    float32 (batch, n_folds, n_features): each fold's pooled backbone features, which the
    out-of-distribution score compares with the training images' (:mod:`protloc.core.ood`).

Next to ``model.onnx`` the export writes ``model.onnx.json`` (preprocessing: channels, size,
mean/std, label schema; the folds; the thresholds at export time; the input/output contract),
so the ONNX file is usable without protloc. The default location is ``RUN/model.onnx``, where
``Predictor.from_run(RUN, engine='onnx')`` and ``protloc predict --engine onnx`` look; exporting
the whole ensemble elsewhere also refreshes that copy.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, RunFolderError
from protloc.core.runfolder import RunFolder
from protloc.core.runfolder import onnx_meta_path as meta_path

__all__ = ["export_onnx", "load_onnx", "meta_path"]

OPSET = 17


def _ensemble_module(models):
    import torch
    from torch import nn

    class Ensemble(nn.Module):
        def __init__(self, nets):
            super().__init__()
            self.nets = nn.ModuleList(nets)

        def forward(self, x):
            outs = [n.forward_with_features(x) for n in self.nets]
            fold = torch.stack([torch.sigmoid(logits) for logits, _ in outs], dim=1)
            return fold.mean(dim=1), fold, torch.stack([f for _, f in outs], dim=1)

    return Ensemble(models).eval()


def export_onnx(run, onnx_path=None, *, folds="all", opset: int = OPSET, check: bool = True) -> dict:
    """Export ``run``'s models to ONNX (atomic) and write the ``.json`` sidecar.

    Parameters
    ----------
    run : path             the run folder
    onnx_path : path       output file (default ``RUN/model.onnx``)
    folds : 'all', int or list of int
    check : bool           run onnxruntime once and compare with torch (max abs difference)

    Returns the metadata dict (with ``path`` and, if checked, ``max_abs_diff``).

    Examples
    --------
    >>> info = export_onnx("runs/r1")  # doctest: +SKIP
    >>> info["folds"], info["max_abs_diff"] < 1e-4  # doctest: +SKIP
    ([0, 1, 2, 3, 4], True)
    """
    import torch

    from protloc.core.atomic import atomic_path, write_json
    from protloc.models.network import load_weights

    lo, hi = opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not lo <= opset <= hi:
        raise InputError("--opset", expected=f"an ONNX opset {lo} to {hi} (this torch's exporter)", got=repr(opset),
                         fix=f"use the default --opset {OPSET}")
    rf = RunFolder(run).check()
    pre = rf.preprocessing()
    use = rf.select_folds(folds, flag="--fold")
    models = [load_weights(rf.model_path(f)) for f in use]
    net = _ensemble_module(models)
    out = Path(onnx_path) if onnx_path else rf.onnx_path
    x = torch.zeros(2, pre.in_chans, pre.size, pre.size)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (x,), str(tmp), input_names=["input"],
                              output_names=["probs", "fold_probs", "features"],
                              dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"},
                                            "fold_probs": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception as e:  # noqa: BLE001 - an operator this opset lacks: torch raises several types
            if opset == OPSET:
                raise
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise InputError("--opset", expected=f"an opset that has every operator of {pre.in_chans}-channel "
                             f"{models[0].spec.backbone}", got=f"{opset} ({why})",
                             fix=f"use the default --opset {OPSET}") from None
    rule = rf.thresholds()
    meta = {
        "format": "protloc-onnx-1",
        "input": {"name": "input", "dtype": "float32", "layout": "NCHW",
                  "shape": ["batch", pre.in_chans, pre.size, pre.size],
                  "normalization": "(uint8 / 255 - mean) / std per channel"},
        "outputs": {"probs": "sigmoid probabilities (batch, n_classes), mean over folds",
                    "fold_probs": "per-fold probabilities (batch, n_folds, n_classes)",
                    "features": "per-fold pooled backbone features (batch, n_folds, n_features), for the "
                                "out-of-distribution score"},
        "folds": use,
        "preprocessing": pre.to_dict(),
        "classes": list(pre.classes),
        "thresholds": [float(v) for v in rule.values],
        "at_least_one": rule.at_least_one,
        "thresholds_source": rule.source,
        "opset": opset,
        "run": str(rf.root.resolve()),
    }
    if check:
        session, _ = load_onnx(out, meta=meta)
        xr = torch.from_numpy(np.random.default_rng(0).normal(size=(3, pre.in_chans, pre.size, pre.size))
                              .astype(np.float32))
        with torch.inference_mode():
            ref = net(xr)[0].numpy()
        got = session.run(["probs"], {"input": xr.numpy()})[0]
        meta["max_abs_diff"] = float(np.abs(ref - got).max())
    write_json(meta_path(out), meta)
    if folds in (None, "all") and out.resolve() != rf.onnx_path.resolve():
        with atomic_path(rf.onnx_path) as tmp:
            shutil.copyfile(out, tmp)
        write_json(rf.onnx_meta_path, meta)
    meta["path"] = str(out)
    return meta


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch's TorchScript exporter (the one protloc uses) can write."""
    try:
        from torch.onnx import _constants as c

        return int(c.ONNX_MIN_OPSET), int(getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):  # pragma: no cover - other torch versions
        return 7, 20


def load_onnx(path, *, device=None, meta: dict | None = None, threads: int | None = None):
    """Open an exported model: ``(onnxruntime.InferenceSession, metadata dict)``."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path}: no ONNX model. Fix: run `protloc export {path.parent}` first "
                             "(or use --engine torch)")
    if meta is None:
        from protloc.core.readers import read_json

        mp = meta_path(path)
        if not mp.exists():
            raise RunFolderError(f"{mp}: missing (it holds the preprocessing of {path.name}). Fix: "
                                 "re-export with `protloc export`")
        meta = read_json(mp, what="ONNX export description", fix="re-export with `protloc export`",
                         error=RunFolderError)
    providers = ["CPUExecutionProvider"]
    if device is not None and str(device).startswith("cuda") and \
            "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise RunFolderError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e}). Fix: "
                             "re-export with `protloc export`") from None
    return session, meta
