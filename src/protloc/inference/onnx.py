"""Export a run's fold ensemble (or one fold) to ONNX, cache it in the run, quantise it, and load
it back with onnxruntime.

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
mean/std, label schema; the folds; the thresholds at export time; the input/output contract;
the **fingerprint**: sha256 of each ``models/fold*.pt`` and of the preprocessing), so the ONNX
file is usable without protloc. The fingerprint is also written into the graph itself
(``metadata_props['protloc_fingerprint']``), so a ``model.onnx`` copied from elsewhere cannot
pass for this run's.

The cache
---------
:func:`cached_onnx` is what ``Predictor.from_run(engine='auto'|'onnx')`` calls: it returns the
run's ONNX model (:meth:`~protloc.core.runfolder.RunFolder.onnx_file`), exporting it first when
it is missing, and **re-exporting with a note** when it is stale (the fold weights or the
preprocessing changed since the export) or foreign (exported from another run). A run without
fold weights (an ONNX-only copy) uses its ``model.onnx`` as it is.

Quantised models
----------------
``export_onnx(run, int8=True)`` (``protloc export RUN --int8``) writes ``model.int8.onnx``: ORT
static quantisation (QDQ, per-channel int8 weights in 7 bits (``reduce_range``: AVX2 without
VNNI overflows with 8), uint8 activations, MinMax calibration on training images of the run's
data source; QOperator and percentile calibration measured no better, docs/speed.md; the first
quarter of the convolutions, at high resolution, stay fp32: :data:`INT8_FP32_CONV_SHARE`) and
records in ``model.onnx.json['int8']`` the
macro F1 of fp32 and int8 on held-out images (out-of-fold images of the run not used for
calibration, each predicted by the fold that did not train on it), at thresholds fitted on fp32's
probabilities of other images (:func:`~protloc.core.thresholds.cross_fitted_f1`: the run's own
thresholds were fitted on these images and flatter fp32).
:func:`cached_onnx` picks the int8 model only when the recorded drop is at most
:data:`INT8_MAX_F1_DROP` (and says why not otherwise).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, RunFolderError
from protloc.core.runfolder import RunFolder
from protloc.core.runfolder import onnx_meta_path as meta_path

__all__ = ["export_onnx", "load_onnx", "meta_path", "cached_onnx", "run_fingerprint", "session_options",
           "INT8_MAX_F1_DROP", "INT8_FP32_CONV_SHARE", "early_convs", "FORMAT"]

OPSET = 17
#: the graph contract (inputs/outputs); a new contract re-exports cached models
FORMAT = "protloc-onnx-3"  # 3: + the features output (out-of-distribution scores)
#: the int8 model is used only when its macro F1 on held-out images is at most this much lower
INT8_MAX_F1_DROP = 0.005
_FP_KEY = "protloc_fingerprint"


def _rf(run) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(run, folds) -> dict:
    """What an export of ``folds`` of ``run`` is made of: sha256 of each fold's weights file and of
    the preprocessing, and a ``key`` over both (and :data:`FORMAT`).

    Examples
    --------
    >>> fp = run_fingerprint("runs/r1", [0, 1])  # doctest: +SKIP
    >>> sorted(fp), len(fp["key"])  # doctest: +SKIP
    (['key', 'preprocessing_sha256', 'weights_sha256'], 64)
    """
    rf = _rf(run)
    weights = {str(int(f)): _sha256(rf.model_path(f)) for f in folds}
    pre = json.dumps(rf.preprocessing().to_dict(), sort_keys=True)
    pre_sha = hashlib.sha256(pre.encode()).hexdigest()
    key = hashlib.sha256(json.dumps([FORMAT, weights, pre_sha], sort_keys=True).encode()).hexdigest()
    return {"key": key, "weights_sha256": weights, "preprocessing_sha256": pre_sha}


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


def _static_same_padding(net, x) -> int:
    """Replace timm's dynamic TF-'same' convolutions (``Conv2dSame``: pads computed from the input
    shape at run time) by a constant ``ZeroPad2d`` + ``Conv2d`` for the input ``x``'s size, in
    place; returns how many were replaced. The graph then has no shape arithmetic: onnxruntime
    fuses the pads and the int8 quantiser can handle it. Same numbers (the run's size is fixed).
    """
    import torch
    from torch import nn

    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
    except ImportError:  # pragma: no cover - other timm versions
        return 0
    sizes = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(m, tuple(a[0].shape[-2:])))
             for m in net.modules() if isinstance(m, Conv2dSame)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    done = 0
    for parent in list(net.modules()):
        for name, m in list(parent.named_children()):
            if m in sizes:
                conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups,
                                 bias=m.bias is not None)
                conv.weight, conv.bias = m.weight, m.bias
                pad = pad_same_arg(list(sizes[m]), list(m.weight.shape[-2:]), m.stride, m.dilation)
                setattr(parent, name, nn.Sequential(nn.ZeroPad2d(pad), conv))
                done += 1
    return done


def _stamp(path: Path, fingerprint: str) -> None:
    """Write the fingerprint into the graph's metadata (in place)."""
    import onnx

    model = onnx.load(str(path))
    for p in list(model.metadata_props):
        if p.key == _FP_KEY:
            model.metadata_props.remove(p)
    model.metadata_props.add(key=_FP_KEY, value=fingerprint)
    onnx.save(model, str(path))


def export_onnx(run, onnx_path=None, *, folds="all", opset: int = OPSET, check: bool = True,
                int8: bool = False, calib_images: int = 256, progress: bool = False) -> dict:
    """Export ``run``'s models to ONNX (atomic) and write the ``.json`` sidecar.

    Parameters
    ----------
    run : path             the run folder
    onnx_path : path       output file (default :meth:`RunFolder.onnx_file` of ``folds``)
    folds : 'all', int or list of int
    check : bool           run onnxruntime once and compare with torch (max abs difference)
    int8 : bool            also write the static int8 quantisation (``model.int8.onnx``) and
                           record its held-out macro F1 change (needs the training images)
    calib_images : int     training images used to calibrate the int8 activations

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
    rf = _rf(run).check()
    pre = rf.preprocessing()
    use = rf.select_folds(folds, flag="--fold")
    every = use == rf.folds()
    out = Path(onnx_path) if onnx_path else rf.onnx_file(None if every else use)
    fp = run_fingerprint(rf, use)
    models = [load_weights(rf.model_path(f)) for f in use]
    net = _ensemble_module(models)
    x = torch.zeros(2, pre.in_chans, pre.size, pre.size)
    _static_same_padding(net, x)
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
        _stamp(Path(tmp), fp["key"])
    rule = rf.thresholds()
    meta = {
        "format": FORMAT,
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
        "fingerprint": fp,
    }
    if check:
        session, _ = load_onnx(out, meta=meta)
        xr = torch.from_numpy(np.random.default_rng(0).normal(size=(3, pre.in_chans, pre.size, pre.size))
                              .astype(np.float32))
        with torch.inference_mode():
            ref = net(xr)[0].numpy()
        got = session.run(["probs"], {"input": xr.numpy()})[0]
        meta["max_abs_diff"] = float(np.abs(ref - got).max())
    if int8:
        meta["int8"] = quantize_int8(rf, out, use, n_calib=calib_images, progress=progress)
    else:  # a re-export of the same weights keeps the int8 record (the int8 file stays valid)
        old = (_read_meta(out) or {}).get("int8")
        if old and old.get("fingerprint") == fp["key"]:
            meta["int8"] = old
    write_json(meta_path(out), meta)
    if every and out.resolve() != rf.onnx_path.resolve():
        with atomic_path(rf.onnx_path) as tmp:
            shutil.copyfile(out, tmp)
        write_json(rf.onnx_meta_path, meta)
        if int8:
            with atomic_path(rf.onnx_file(int8=True)) as tmp:
                shutil.copyfile(_int8_path(out), tmp)
    meta["path"] = str(out)
    return meta


def opset_range() -> tuple[int, int]:
    """The ONNX opsets torch's TorchScript exporter (the one protloc uses) can write."""
    try:
        from torch.onnx import _constants as c

        return int(c.ONNX_MIN_OPSET), int(getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):  # pragma: no cover - other torch versions
        return 7, 20


def _int8_path(fp32_path: Path) -> Path:
    p = Path(fp32_path)
    return p.with_name(p.name[:-len(".onnx")] + ".int8.onnx" if p.name.endswith(".onnx") else p.name + ".int8")


# --------------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------------
def _held_out(rf: RunFolder, folds, n_calib: int):
    """(calibration ids, evaluation ids, their truth (N, C), their fold numbers): out-of-fold
    images of ``folds``; a seeded sample is kept for calibration, the rest for evaluation."""
    ids, _, y, ofolds = rf.oof()
    keep = np.flatnonzero(np.isin(ofolds, list(folds)))
    if len(keep) < 20:
        raise InputError(f"{rf.oof_csv}: {len(keep)} out-of-fold images of folds {list(folds)}; int8 needs "
                         "held-out images to measure its macro-F1 change", fix="train with validation "
                         "(--folds K or the default holdout) before `protloc export --int8`")
    order = np.random.default_rng(0).permutation(keep)
    nc = int(min(n_calib, len(order) // 3))
    cal, ev = np.sort(order[:nc]), np.sort(order[nc:])
    return [ids[i] for i in cal], [ids[i] for i in ev], y[ev], np.asarray(ofolds)[ev]


def _read_ids(rf: RunFolder, ids, pre, *, progress: bool = False) -> np.ndarray:
    import concurrent.futures as cf

    from protloc.core.progress import progress_bar
    from protloc.inference.inputs import read_for_run

    src = rf.data_source()
    if src is None or not Path(src.images).is_dir():
        where = "no data.json" if src is None else f"{src.images} not found"
        raise InputError(f"{rf.root}: the training images are needed to calibrate and check int8 ({where})",
                         fix="keep the training images where `protloc train` found them, or export without --int8")
    chans = tuple(src.channels) if src.fmt == "tiff" else None
    out = np.empty((len(ids), pre.size, pre.size, pre.in_chans), np.uint8)

    def one(i):
        out[i] = read_for_run(Path(src.images) / str(ids[i]), pre, channels=chans)

    with progress_bar(total=len(ids), description="int8: read images", enable=progress) as advance, \
            cf.ThreadPoolExecutor(default_threads()) as pool:
        for _ in pool.map(one, range(len(ids))):
            advance(1)
    return out


def quantize_qdq(src, dst, cal: np.ndarray, *, keep_fp32=()) -> None:
    """protloc's int8 method: ORT static QDQ quantisation of the (pre-processed) graph ``src`` to
    ``dst``, calibrated on the normalised images ``cal`` (N, C, H, W) in batches of 16; the nodes
    named in ``keep_fp32`` stay fp32 (``benchmarks/bench_int8_variants.py`` compares such variants)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(cal), 16))

        def get_next(self):
            s = next(self._it, None)
            return None if s is None else {"input": cal[s:s + 16]}

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, reduce_range=True, nodes_to_exclude=list(keep_fp32),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


#: the share of the convolutions, in graph order from the input, that int8 keeps in fp32: the
#: high-resolution layers, whose quantisation error every later layer carries (chosen on the demo
#: run, a selection style: mean |probability change| 0.017 -> 0.005, mAP change -0.011 -> -0.001,
#: 1.46x -> 1.44x fp32's speed on 1 thread; ``benchmarks/bench_int8_variants.py``)
INT8_FP32_CONV_SHARE = 0.25


def early_convs(graph, share: float = INT8_FP32_CONV_SHARE) -> list[str]:
    """Names of the first ``share`` of the Conv nodes of the ONNX model at ``graph`` (graph order,
    which for a feed-forward CNN is input to output): what :func:`quantize_int8` keeps in fp32."""
    import onnx

    convs = [n.name for n in onnx.load(str(graph), load_external_data=False).graph.node if n.op_type == "Conv"]
    return convs[:int(len(convs) * share)]


def quantize_int8(rf: RunFolder, fp32_path: Path, folds, *, n_calib: int = 256, progress: bool = False) -> dict:
    """Static int8 quantisation of ``fp32_path`` -> ``*.int8.onnx``; returns the record of
    ``model.onnx.json['int8']`` (method, calibration and held-out macro F1 of both models)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from protloc.core.atomic import atomic_path
    from protloc.core.metrics import macro_f1
    from protloc.core.thresholds import cross_fitted_f1

    pre = rf.preprocessing()
    cal_ids, ev_ids, y, ev_folds = _held_out(rf, folds, n_calib)
    cal = pre.normalize(_read_ids(rf, cal_ids, pre, progress=progress))

    out = _int8_path(fp32_path)
    graph_key = _graph_fingerprint(fp32_path)  # parses the fp32 graph: once
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep = Path(str(tmp) + ".prep.onnx")
        try:
            quant_pre_process(str(fp32_path), str(prep), skip_symbolic_shape=True)
            keep = early_convs(prep)
            quantize_qdq(prep, tmp, cal, keep_fp32=keep)
        finally:
            prep.unlink(missing_ok=True)
        _stamp(Path(tmp), graph_key)
    rule = rf.thresholds()
    imgs = _read_ids(rf, ev_ids, pre, progress=progress)
    col = {f: j for j, f in enumerate(folds)}
    pick = np.array([col[int(f)] for f in ev_folds])
    probs = {}
    for name, path in (("fp32", fp32_path), ("int8", out)):
        sess, _ = load_onnx(path, meta={})
        fold_probs = np.concatenate([sess.run(["fold_probs"], {"input": pre.normalize(imgs[s:s + 64])})[0]
                                     for s in range(0, len(imgs), 64)])
        probs[name] = fold_probs[np.arange(len(imgs)), pick]   # each image by the fold that held it out
    # the run's thresholds were fitted on these very images' out-of-fold probabilities: scored at
    # them, fp32 is flattered and any other model looks worse than it is, so the gate scores both at
    # thresholds fitted on fp32's probabilities of the *other* half of the images (cross_fitted_f1)
    xf = cross_fitted_f1(y, probs["fp32"], probs["int8"], method=rule.method or "f1", at_least_one=rule.at_least_one)
    at_run = {k: float(macro_f1(y, rule.apply(p))) for k, p in probs.items()}
    drop = -xf["change"][0]
    return {"path": out.name, "method": "onnxruntime static quantisation, QDQ, per-channel 7-bit weights "
                                         "(reduce_range: no u8s8 overflow on AVX2 without VNNI), uint8 "
                                         "activations, MinMax calibration; the first "
                                         f"{len(keep)} convolutions (high resolution) kept in fp32",
            "fp32_nodes": keep,
            "calibration": f"{len(cal_ids)} out-of-fold training images (seeded sample)",
            "evaluation": f"{len(ev_ids)} other out-of-fold images, each by the fold that held it out, at "
                          "thresholds fitted on fp32's probabilities of the other half of them (20 random "
                          "half-splits, the same for both models)",
            "macro_f1_fp32": xf["f1"][0], "macro_f1_int8": xf["f1"][1],
            "macro_f1_change": xf["change"][0], "macro_f1_change_sd": xf["change_sd"][0],
            "at_run_thresholds": {"macro_f1_fp32": round(at_run["fp32"], 5), "macro_f1_int8": round(at_run["int8"], 5),
                                  "note": f"the run's thresholds ({rule.source}), fitted on these images: "
                                          "flatters fp32"},
            "max_abs_prob_diff": round(float(np.abs(probs["fp32"] - probs["int8"]).max()), 5),
            "max_f1_drop": INT8_MAX_F1_DROP, "usable": bool(drop <= INT8_MAX_F1_DROP),
            "fingerprint": graph_key}


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------
def _graph_fingerprint(path) -> str | None:
    """The fingerprint stamped into an ONNX file (None: none, or unreadable).

    Read from the file's top-level ``metadata_props`` by :func:`onnx_metadata` (a few ms),
    not ``onnx.load`` (importing onnx and parsing the graph took 0.2 s of every
    ``protloc predict``)."""
    try:
        return onnx_metadata(path).get(_FP_KEY)
    except (OSError, ValueError):  # a damaged file is simply not ours
        return None


def _varint(buf, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def _fields(buf):
    """``(field number, wire type, value)`` of a protobuf message's top-level fields; a
    length-delimited value is a memoryview of its bytes (nothing else is parsed)."""
    i, n = 0, len(buf)
    while i < n:
        tag, i = _varint(buf, i)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("truncated protobuf message")
        yield num, wire, value


def onnx_metadata(path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (``ModelProto`` field 14, key 1 / value 2),
    read from the protobuf wire format without importing onnx or parsing the graph.

    Raises ``OSError`` (unreadable) or ``ValueError`` (not a protobuf message).

    Examples
    --------
    >>> import onnx, tempfile, os
    >>> m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    >>> onnx.helper.set_model_props(m, {"protloc_fingerprint": "abc"})
    >>> f = os.path.join(tempfile.mkdtemp(), "m.onnx"); onnx.save(m, f)
    >>> onnx_metadata(f)
    {'protloc_fingerprint': 'abc'}
    """
    buf = memoryview(Path(path).read_bytes())
    out = {}
    for num, wire, value in _fields(buf):
        if num == 14 and wire == 2:
            entry = {k: bytes(v).decode("utf-8") for k, w, v in _fields(value) if w == 2 and k in (1, 2)}
            out[entry.get(1, "")] = entry.get(2, "")
    return out


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(meta_path(path).read_text())
    except (OSError, ValueError):
        return None


def _why_stale(path: Path, fp: dict) -> str | None:
    """None when ``path`` (+ sidecar) is a current export with fingerprint ``fp``; else why not."""
    if not path.is_file():
        return "missing"
    meta = _read_meta(path)
    if meta is None:
        return f"{meta_path(path).name} missing or unreadable"
    old = meta.get("fingerprint") or {}
    if old.get("key") != fp["key"]:
        if old.get("weights_sha256") and old.get("weights_sha256") != fp["weights_sha256"]:
            return "the fold weights changed since it was exported"
        if old.get("preprocessing_sha256") and old.get("preprocessing_sha256") != fp["preprocessing_sha256"]:
            return "the preprocessing changed since it was exported"
        return "exported by another protloc version or from another run"
    if _graph_fingerprint(path) != fp["key"]:
        return "the .onnx file does not match its sidecar (copied from elsewhere?)"
    return None


def _note_stderr(message: str) -> None:
    import sys

    print(f"note: {message}", file=sys.stderr)


def cached_onnx(run, folds=None, *, int8: str = "auto", note=_note_stderr) -> tuple[Path, dict]:
    """The run's current ONNX model for ``folds`` (None: all): ``(path, metadata)``.

    Exports it once (atomic) when missing; re-exports it, with a ``note(message)``, when it is
    stale or foreign (:func:`run_fingerprint`). ``int8``: ``'auto'`` uses ``model.int8.onnx``
    when it exists, matches the fp32 export and its recorded held-out macro-F1 drop is at most
    :data:`INT8_MAX_F1_DROP` (else a note says why fp32 is used); ``'off'`` never; ``'on'``
    requires it (an error when unusable). Raises what the export raises (e.g. an op ONNX
    cannot express); the Predictor then falls back to torch.
    """
    rf = _rf(run)
    have = rf.folds()
    use = rf.select_folds(folds) if have else None
    every = use is None or use == have
    path = rf.onnx_file(None if every else use)
    if not have:  # an ONNX-only copy of a run: nothing to check against
        meta = _read_meta(path)
        if meta is None:
            raise RunFolderError(f"{path}: no fold weights (models/) and no usable ONNX model",
                                 fix=f"copy the whole run folder, or `protloc export {rf.root}` where it was trained")
        return path, meta
    fp = run_fingerprint(rf, use)
    why = _why_stale(path, fp)
    if why is not None:  # said once it worked (a failure has its own message)
        export_onnx(rf.root, path, folds="all" if every else use)
        if why == "missing":
            note(f"exported the run's ONNX model once (cached as {path}; `--engine torch` skips it)")
        else:
            note(f"{path.name}: {why}; re-exported it from models/")
    meta = _read_meta(path) or {}
    if int8 == "off":
        return path, meta
    ipath = rf.onnx_file(None if every else use, int8=True)
    rec = meta.get("int8")
    if not ipath.is_file():
        if int8 == "on":
            raise InputError("--int8: no quantised model of this run", fix=f"run `protloc export {rf.root} --int8` first")
        return path, meta
    reason = None
    if rec is None or rec.get("fingerprint") != fp["key"] or _graph_fingerprint(ipath) != fp["key"]:
        reason = f"{ipath.name} is stale (the weights changed since `protloc export --int8`)"
    elif not rec.get("usable"):
        reason = (f"{ipath.name} lowers the held-out macro F1 by {-rec['macro_f1_change']:.4f} "
                  f"(> {INT8_MAX_F1_DROP})")
    if reason is not None:
        if int8 == "on":
            raise InputError(f"--int8: {reason}", fix=f"re-run `protloc export {rf.root} --int8`, or drop --int8")
        note(f"{reason}; using the fp32 model")
        return path, meta
    return ipath, {**meta, "quantized": "int8"}


# --------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------
def default_threads() -> int:
    """CPU threads this process may use: the cores it is allowed to run on
    (:func:`protloc.core.cpu.available_cores`).

    Examples
    --------
    >>> default_threads() >= 1
    True
    """
    from protloc.core.cpu import available_cores

    return available_cores()


def session_options(threads: int = 1):
    """onnxruntime session options: ``threads`` intra-op threads, one inter-op thread, and no
    spinning (idle threads that spin steal the cores of a busy machine: measured in
    ``benchmarks/bench_predict.py``, docs/speed.md)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def load_onnx(path, *, device=None, meta: dict | None = None, threads: int | None = None):
    """Open an exported model: ``(onnxruntime.InferenceSession, metadata dict)``.

    ``threads``: intra-op threads of the session (default 1: the Predictor runs one session per
    worker thread on separate batches, which keeps every core busy without synchronisation).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path}: no ONNX model", fix=f"run `protloc export {path.parent}` first "
                             "(or use --engine torch)")
    if meta is None:
        from protloc.core.readers import read_json

        mp = meta_path(path)
        if not mp.exists():
            raise RunFolderError(f"{mp}: missing (it holds the preprocessing of {path.name})",
                                 fix="re-export with `protloc export`")
        meta = read_json(mp, what="ONNX export description", fix="re-export with `protloc export`",
                         error=RunFolderError)
    providers = ["CPUExecutionProvider"]
    if device is not None and str(device).startswith("cuda") and \
            "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(threads or 1), providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise RunFolderError(f"{path}: cannot load the ONNX model ({type(e).__name__}: {e})",
                             fix="re-export with `protloc export`") from None
    return session, meta
