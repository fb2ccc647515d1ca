"""Prediction from a run folder: fold ensembles, test-time augmentation, labels.

:class:`Predictor` rebuilds everything from the run folder (preprocessing, fold models,
thresholds) and turns images into probabilities and label sets.

Inputs and checks
-----------------
``images`` may be file paths (PNG/JPEG/TIFF; for an ``hpa-channels`` run, ``DIR/ID`` meaning
``DIR/ID_red.png`` ...), (H, W, C) arrays, or one (N, H, W, C) uint8 array. Each image is checked
against the run: a different channel count is an :class:`~protloc.core.errors.InputError` naming the
file; a different image size is **resized** to the run's size (area averaging when shrinking, as
training did; bilinear when enlarging). Enlarging, or a non-square image, gives a one-time
warning: the model never saw such detail or aspect ratio.
16-bit or float data is converted to uint8 as in training (:func:`protloc.io.images.to_uint8`).

Ensembling and TTA
------------------
Every ``RUN/models/fold*.pt`` is loaded (``folds=`` picks a subset). ``tta='d4'`` runs the 8
flips/rotations of the square image (deterministic), ``'flip'`` the identity and the horizontal
flip, ``'none'`` the image alone. Probabilities (after the sigmoid) are merged over views and
folds with ``merge='mean'`` (default) or ``'max'``.

Engines
-------
``auto`` (default): onnxruntime on CPU, torch on CUDA. ``onnx``: onnxruntime on the run's ONNX
model, exported once and cached in the run folder (:func:`protloc.inference.onnx.cached_onnx`:
re-exported, with a note, when the fold weights or the preprocessing changed); the int8 model
of ``protloc export --int8`` is used when its recorded held-out macro-F1 drop is <= 0.005.
``auto`` falls back to torch, with a one-line note, when the export is impossible.
``torch``: CUDA with AMP (float16) when available, else CPU float32; channels_last; always
under ``torch.inference_mode()``. Both give the same numbers within 1e-4 (int8: see
``model.onnx.json``).

Threads
-------
On CPU the work is split into independent batches run by ``threads`` worker threads (default:
the cores this process may use), each batch decoded, normalised and run by one worker with a
single-threaded engine call (onnxruntime intra-op 1, no spinning; torch 1 intra-op thread),
and numpy's BLAS (the OOD scores' matrix products) limited to one thread while a prediction
runs: its own two spinning threads per worker had cost a quarter of the 2-core throughput.
No worker waits on another, so more threads are never slower, on an idle machine or on a
busy one (``benchmarks/bench_predict.py``, docs/speed.md). TTA views of a batch go through the
model in one call (views x images), each image decoded once.

Reading and out-of-distribution scores
--------------------------------------
Files are read with the run's :class:`~protloc.core.preprocessing.Reading` (intensity rule, Z
projection, pixel size; ``from_run(z=, axes=, pixel_size=)`` change the projection, the axes of
undeclared TIFFs and the input images' pixel size). When the run holds an out-of-distribution
reference per fold (``models/fold{k}.ood.npz``, :mod:`protloc.core.ood`), every prediction
also gets ``ood_score`` (1.0 = the flag threshold; the mean over the fold models, computed on
the un-augmented image) and ``ood_flag`` (score > 1): the image is unlike the training images.

Image coercion and checks live in :mod:`protloc.inference.inputs`, the TTA views and merging in
:mod:`protloc.core.tta`; their public names are re-exported here.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import sys
import threading
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from protloc.core.cpu import available_cores
from protloc.core.errors import InputError, RunFolderError
from protloc.core.preprocessing import Preprocessing
from protloc.core.runfolder import RunFolder, RunThresholds
from protloc.core.thresholds import check_thresholds
from protloc.core.tta import MERGES, TTA_MODES, d4_views, merge_probs, tta_views
from protloc.inference.inputs import (as_items, check_choice, check_table, find_missing, load_chunk,
                                      read_for_run, read_table_row)

ENGINES = ("auto", "torch", "onnx")
INT8 = ("auto", "on", "off")

__all__ = ["Predictor", "PredictionResult", "d4_views", "tta_views", "merge_probs", "ENGINES",
           "TTA_MODES", "MERGES", "resolve_engine", "check_threads"]

#: view-images per engine call (TTA views x images); bounds the memory of one call
CALL_IMAGES = 64


def check_threads(threads, *, flag: str = "--threads") -> int | None:
    """None (automatic) or an integer >= 1.

    Examples
    --------
    >>> check_threads(None), check_threads("2")
    (None, 2)
    >>> check_threads(0)
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --threads: expected an integer >= 1 (or leave it out: one per core), got 0. Fix: e.g. --threads 2.
    """
    if threads is None:
        return None
    try:
        n = int(threads)
        ok = n >= 1 and float(threads) == n
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(flag, expected="an integer >= 1 (or leave it out: one per core)", got=repr(threads)
                         if isinstance(threads, str) else str(threads), fix=f"e.g. {flag} 2")
    return n


def _cuda_present() -> bool:
    """CUDA is usable (imports torch only when an NVIDIA driver is there or torch is loaded)."""
    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/dev/nvidia0", "/proc/driver/nvidia")):
        return False
    import torch

    return bool(torch.cuda.is_available())


def resolve_engine(engine: str = "auto", device=None) -> str:
    """The engine ``'auto'`` means here: torch on CUDA, onnxruntime on CPU (when installed).

    Examples
    --------
    >>> resolve_engine("torch"), resolve_engine("auto", "cpu"), resolve_engine("auto", "cuda:1")
    ('torch', 'onnx', 'torch')
    """
    check_choice("engine", engine, ENGINES)
    if engine != "auto":
        return engine
    if device is not None and str(device).strip() not in ("", "auto"):
        return "torch" if str(device).strip().startswith("cuda") else "onnx"
    return "torch" if _cuda_present() else "onnx"




# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass
class PredictionResult:
    """What :meth:`Predictor.predict` returns.

    Attributes
    ----------
    ids : list of str       image ids (file stems, table ids, or ``"0"``, ``"1"``... for arrays)
    probs : ndarray (N, C) float32
    labels : list of list of int   sorted class ids at or above threshold
    label_strings : list of str    the competition's ``"1 4"`` strings ('' when none)
    classes : list of str
    skipped : list of (id, message)  unreadable images left out (only with ``on_error='skip'``)
    ood_score : ndarray (N,) float32 or None   out-of-distribution score (> 1: flagged); None
                                    when the run has no OOD reference
    notes : list of str             what the reading did that holds for many images (with counts)
    """

    ids: list
    probs: np.ndarray
    labels: list
    label_strings: list
    classes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    ood_score: np.ndarray | None = None
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def ood_flag(self) -> np.ndarray | None:
        """True where the image is unlike the training images (``ood_score > 1``)."""
        return None if self.ood_score is None else np.asarray(self.ood_score) > 1.0

    def submission_frame(self):
        """``Image,Label`` DataFrame in the competition format."""
        import pandas as pd

        return pd.DataFrame({"Image": list(self.ids), "Label": list(self.label_strings)})

    def probs_frame(self):
        """``Image`` + one column per class name (+ ``ood_score``, ``ood_flag`` when scored)."""
        import pandas as pd

        df = pd.DataFrame(self.probs, columns=list(self.classes))
        df.insert(0, "Image", list(self.ids))
        if self.ood_score is not None:
            df["ood_score"] = np.round(np.asarray(self.ood_score, np.float64), 4)
            df["ood_flag"] = self.ood_flag.astype(int)
        return df


@contextlib.contextmanager
def one_blas_thread():
    """numpy's BLAS (OpenBLAS / MKL) limited to one thread inside the block, restored after.

    The Predictor runs one worker per core; BLAS threads of its own per worker would compete
    with them (and OpenBLAS's idle threads spin): ``benchmarks/bench_predict.py``, issue 13.
    Overlapping blocks (predictions in several threads, e.g. the web app) share one limit: the
    first sets it, the last restores what was there before.
    """
    global _BLAS, _BLAS_USERS, _BLAS_LIMIT
    with _BLAS_LOCK:
        if _BLAS is None:  # scanning the loaded libraries takes 0.4 ms: once per process
            try:
                from threadpoolctl import ThreadpoolController
                _BLAS = ThreadpoolController()
            except ImportError:  # pragma: no cover - scikit-learn requires it
                _BLAS = False
        if _BLAS and _BLAS_USERS == 0:
            _BLAS_LIMIT = _BLAS.limit(limits=1, user_api="blas")
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0 and _BLAS_LIMIT is not None:
                _BLAS_LIMIT.restore_original_limits()
                _BLAS_LIMIT = None


#: :func:`one_blas_thread`'s state: the threadpoolctl controller (made on first use), the
#: blocks inside it now, and the limit they share
_BLAS = None
_BLAS_USERS = 0
_BLAS_LIMIT = None
_BLAS_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# predictor
# --------------------------------------------------------------------------------------------
class Predictor:
    """Probabilities and labels from a trained run (see the module docstring).

    Attributes
    ----------
    preprocessing : Preprocessing
    classes : list of str
    thresholds : ndarray (C,)   from ``thresholds.json`` (0.5 everywhere if the file is absent)
    at_least_one : bool         from ``thresholds.json``
    threshold_rule : RunThresholds   both, with where they came from (``.source``) and the
                                fitted diagnostics (``RunFolder.thresholds()``)
    models : list of nn.Module  the fold networks (onnx engine: loaded from the run on first
                                use, e.g. for Grad-CAM)
    folds : list of int         fold numbers in the ensemble
    engine, device : str        the engine actually used (``'torch'`` or ``'onnx'``)
    model_file : Path or None   the ONNX file in use (onnx engine)
    quantized : str or None     ``'int8'`` when the int8 model is in use
    threads : int               CPU worker threads (see the module docstring)
    decisions : list of str     what was decided on the way (exports, fallbacks)
    ood : list of OODDetector or None   one per fold model (``RUN/models/fold{k}.ood.npz``)
    pixel_size : float or None  the input images' pixel size in µm given by the user (overrides
                                the files'; ``--pixel-size``)
    """

    def __init__(self, preprocessing: Preprocessing, models=(), *, thresholds=None,
                 at_least_one: bool = False, device=None, engine: str = "torch", onnx_session=None,
                 folds=None, root: Path | None = None, threads: int | None = None, ood=None,
                 pixel_size: float | None = None):
        check_choice("engine", engine, ENGINES[1:])
        self.preprocessing = preprocessing
        self.classes = list(preprocessing.classes)
        c = len(self.classes)
        if isinstance(thresholds, RunThresholds):
            rule = thresholds
        elif thresholds is None:
            rule = RunThresholds(np.full(c, 0.5), at_least_one=bool(at_least_one))
        else:
            rule = RunThresholds(check_thresholds(thresholds, c, where="thresholds"),
                                 at_least_one=bool(at_least_one), source="given")
        self.threshold_rule = rule
        self.engine = engine
        self._models = list(models)
        self.folds = list(folds) if folds is not None else list(range(len(self._models)))
        self.root = root
        self._session = onnx_session
        self._warned_resize = False
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self._pool = None
        self.model_file = None
        self.quantized = None
        self.decisions: list[str] = []
        self.threads = check_threads(threads, flag="threads") or available_cores()
        self.ood = list(ood) if ood else None
        self.pixel_size = None if pixel_size is None else float(pixel_size)
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise InputError("--pixel-size", expected="a pixel size in µm > 0", got=str(pixel_size),
                             fix="e.g. --pixel-size 0.1")
        self._notes: dict[str, int] = {}
        if engine == "torch":
            import torch

            if not self._models:
                raise RunFolderError("no models to predict with", fix="point to a trained run folder")
            from protloc.models.device import resolve_device

            self.device = resolve_device(device)  # 'bogus' or 'cuda' without a GPU: an InputError
            self._cuda = self.device.startswith("cuda")
            for m in self._models:  # channels_last: faster convolutions on CUDA and on CPU (oneDNN)
                m.eval().to(self.device).to(memory_format=torch.channels_last)
            if not self._cuda:
                # one intra-op thread per worker: workers never wait on each other (no spinning
                # OpenMP barriers, which made 2 threads 25x slower than 1 on a busy machine)
                torch.set_num_threads(1)
        else:
            self.device = "cpu" if device is None else str(device)
            self._cuda = False
            if onnx_session is None:
                raise RunFolderError("no ONNX session", fix="use Predictor.from_run(RUN, engine='onnx')")
            if self.ood and "features" not in {o.name for o in onnx_session.get_outputs()}:
                self.ood = None  # an export made before features were exported: no OOD score
                self._notes["the ONNX export has no features output (re-export with `protloc export`): "
                            "no out-of-distribution scores"] = 1
        # serial engines (one GPU) run one call at a time; CPU engines run one per worker
        self._serial = self._cuda or (engine == "onnx" and not self.device.startswith("cpu"))

    @property
    def models(self) -> list:
        """The fold networks; the onnx engine loads them from the run on first use (Grad-CAM)."""
        if not self._models and self.engine == "onnx" and self.root is not None:
            with self._lock:
                if not self._models:
                    from protloc.models.network import load_weights

                    run = RunFolder(self.root)
                    self._models = [load_weights(run.model_path(f)).eval() for f in self.folds
                                    if run.model_path(f).is_file()]
        return self._models

    @property
    def thresholds(self) -> np.ndarray:
        return self.threshold_rule.values

    @thresholds.setter
    def thresholds(self, values) -> None:
        self.threshold_rule = replace(self.threshold_rule, source="given", method=None, optimizer=None,
                                      values=check_thresholds(values, len(self.classes), where="thresholds"))

    @property
    def at_least_one(self) -> bool:
        return self.threshold_rule.at_least_one

    @at_least_one.setter
    def at_least_one(self, value: bool) -> None:
        self.threshold_rule = replace(self.threshold_rule, at_least_one=bool(value))

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, path, *, device=None, engine: str = "auto", folds=None, onnx_path=None,
                 threads: int | None = None, int8: str = "auto", note=None, z: str | None = None,
                 axes: str | None = None, pixel_size: float | None = None) -> "Predictor":
        """Load ``RUN``: preprocessing, fold models (all by default), thresholds and the
        out-of-distribution references.

        ``z``, ``axes``: another Z projection / the axes of TIFFs that do not declare theirs (else
        the run's); ``pixel_size``: the input images' pixel size in µm (overrides the files').

        ``folds``: None (all), an int or a list of fold numbers. ``engine``: ``'auto'`` (onnx
        on CPU, torch on CUDA), ``'onnx'`` or ``'torch'`` (module docstring). The onnx engine
        uses the run's cached ONNX model (exported on first use; ``onnx_path``: that file
        instead, as it is) and never imports torch when the cache is current. ``int8``:
        ``'auto'`` (the int8 model when it passed its macro-F1 check), ``'on'`` or ``'off'``.
        ``threads``: CPU worker threads (None: one per core). ``note(message)`` receives what
        was decided on the way (default: printed to stderr as ``note: ...``).
        """
        from protloc.inference.onnx import _note_stderr

        check_choice("engine", engine, ENGINES)
        check_choice("int8", int8, INT8)
        threads = check_threads(threads, flag="threads")
        notes: list[str] = []

        def say(message: str) -> None:
            notes.append(message)
            (note or _note_stderr)(message)

        run = RunFolder(path)
        run.check(need_models=engine == "torch" or (onnx_path is None and not run.onnx_path.is_file()))
        pre = run.preprocessing()
        rule = run.thresholds()
        read = dict(z=z, axes=axes, pixel_size=pixel_size)
        use = resolve_engine(engine, device)
        if use == "onnx" and engine == "auto" and onnx_path is None:
            try:
                return cls._from_onnx(run, pre, rule, device=device, folds=folds, threads=threads, int8=int8,
                                      say=say, notes=notes, read=read)
            except InputError:
                raise
            except Exception as e:  # noqa: BLE001 - an export can fail in many ways (an op ONNX lacks...)
                say(f"cannot use onnxruntime for this run ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    "using torch")
                use = "torch"
        elif use == "onnx":
            return cls._from_onnx(run, pre, rule, device=device, folds=folds, threads=threads, int8=int8,
                                  say=say, notes=notes, onnx_path=onnx_path, read=read)
        from protloc.models.network import load_weights

        run.check(need_models=True)
        use_folds = run.select_folds(folds)
        models = [load_weights(run.model_path(f)) for f in use_folds]
        for f, m in zip(use_folds, models):
            if m.spec.in_chans != pre.in_chans or m.spec.num_classes != len(pre.classes):
                raise RunFolderError(f"{run.model_path(f)}", expected=f"{pre.in_chans} input "
                                     f"channels and {len(pre.classes)} classes "
                                     "(preprocessing.json)",
                                     got=f"{m.spec.in_chans} and {m.spec.num_classes}",
                                     fix="keep the run folder's files together")
        ood = run.ood(use_folds)
        if ood is not None:
            feats = [int(m.backbone.num_features * (2 if m.spec.pool == "catavgmax" else 1)) for m in models]
            if any(d.n_features != n for d, n in zip(ood, feats)):
                raise RunFolderError(f"{run.ood_path(use_folds[0])}: OOD reference of {ood[0].n_features} features "
                                     f"does not fit the model's {feats[0]}",
                                     fix="keep the run folder's files together (or delete the .ood.npz files)")
        pred = cls._with_reading(pre, models, thresholds=rule, device=device, engine="torch", folds=use_folds,
                                 root=run.root, threads=threads, ood=ood, **read)
        pred.decisions = notes
        return pred

    @classmethod
    def _from_onnx(cls, run: RunFolder, pre, rule, *, device, folds, threads, int8, say, notes, read,
                   onnx_path=None) -> "Predictor":
        from protloc.core.runfolder import parse_folds
        from protloc.inference.onnx import cached_onnx, load_onnx

        if onnx_path is not None:
            onnx_file, meta = Path(onnx_path), None
        else:
            onnx_file, meta = cached_onnx(run.root, folds, int8=int8, note=say)
        session, meta = load_onnx(onnx_file, device=device, meta=meta, threads=1)
        have = list(meta.get("folds", []))
        want = parse_folds(folds)
        if want is not None and sorted(want) != sorted(have):
            raise InputError(f"{onnx_file}", expected=f"an export of folds {want}",
                             got=f"folds {have}",
                             fix=f"run `protloc export {run.root} --fold {want[0]}`")
        if meta.get("preprocessing") and Preprocessing.from_dict(meta["preprocessing"]) != pre:
            raise RunFolderError(f"{onnx_file}", expected="the run's preprocessing",
                                 got="a different one (exported from another run?)",
                                 fix=f"re-export with `protloc export {run.root}`")
        pred = cls._with_reading(pre, (), thresholds=rule, device=device, engine="onnx", onnx_session=session,
                                 folds=have, root=run.root, threads=threads, ood=run.ood(have) if have else None,
                                 **read)
        pred.model_file, pred.quantized, pred.decisions = onnx_file, meta.get("quantized"), notes
        return pred

    @classmethod
    def _with_reading(cls, pre, models, *, z, axes, pixel_size, **kw) -> "Predictor":
        return cls(pre.with_reading(z=z, axes=axes), models, pixel_size=pixel_size, **kw)

    def describe(self) -> str:
        """One line: engine, model file, threads (what predict prints)."""
        what = self.engine + (f" ({self.model_file.name}{', int8' if self.quantized else ''})"
                              if self.model_file is not None else f" on {self.device}")
        return f"{what}, {len(self.folds)} fold model(s), {self.threads} thread(s)"

    # ------------------------------------------------------------------------------------
    def _warn_resize(self, message: str) -> None:
        """Warn once per predictor that images are enlarged or not square."""
        if not self._warned_resize:
            self._warned_resize = True
            warnings.warn(f"{message} (shown once)", UserWarning, stacklevel=5)

    def _note(self, info: dict) -> None:
        for n in info.get("notes", ()):
            self._notes[n] = self._notes.get(n, 0) + 1

    def notes(self) -> list[str]:
        """What the reading did that holds for many images so far, with counts."""
        return [n if c <= 1 else f"{n} ({c} images)" for n, c in self._notes.items()]

    def _prepare(self, img, where: str) -> np.ndarray:
        """One (H, W, C) array -> the run's input (:meth:`Preprocessing.prepare`; warns once if enlarging)."""
        info: dict = {}
        out = self.preprocessing.prepare(img, where=where, on_resize=self._warn_resize, pixel_size=self.pixel_size,
                                         info=info)
        self._note(info)
        return out

    def read_file(self, path, *, info: dict | None = None) -> np.ndarray:
        """Read one image file (or ``DIR/ID``) as the run expects it: uint8 (size, size, in_chans).

        ``info`` (a dict) receives what the reading did (intensity rule, pixel size, notes)."""
        info = {} if info is None else info
        out = read_for_run(path, self.preprocessing, on_resize=self._warn_resize, pixel_size=self.pixel_size,
                           info=info)
        self._note(info)
        return out

    def _read_row(self, table, i: int, *, channels_chosen: bool) -> np.ndarray:
        info: dict = {}
        out = read_table_row(table, i, self.preprocessing, channels_chosen=channels_chosen,
                             on_resize=self._warn_resize, pixel_size=self.pixel_size, info=info)
        self._note(info)
        return out

    def _as_batch(self, images) -> tuple[list[str], np.ndarray]:
        """Paths / arrays (see :func:`protloc.inference.inputs.as_items`) -> (ids, uint8 batch)."""
        ids, items = as_items(images)
        out = np.empty((len(items), self.preprocessing.size, self.preprocessing.size,
                        self.preprocessing.in_chans), np.uint8)
        for i, x in enumerate(items):
            if isinstance(x, (str, Path)):
                out[i] = self.read_file(x)
            else:
                out[i] = self._prepare(x, f"image {i}")
        return ids, out

    # ------------------------------------------------------------------------------------
    def _executor(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="protloc-predict")
            return self._pool

    def _ordered(self, fn, items, *, depth: int | None = None):
        """``fn(item)`` for each item on the worker threads, yielded in order, at most ``depth``
        (default 2 x threads) in flight (bounded memory)."""
        items = list(items)
        with one_blas_thread():
            if self.threads == 1 or len(items) <= 1:
                yield from map(fn, items)
                return
            pool, depth = self._executor(), depth or 2 * self.threads
            futs = [pool.submit(fn, it) for it in items[:depth]]
            for j in range(len(items)):
                fut = futs[j]
                if j + depth < len(items):
                    futs.append(pool.submit(fn, items[j + depth]))
                yield fut.result()

    def predict_array(self, batch, *, tta: str = "none", merge: str = "mean",
                      batch_size: int = 64, with_ood: bool = False):
        """uint8 (N, H, W, C) -> probabilities (N, C) float32 (the core; web/explain use it).

        Images of another size are resized (one warning); a wrong channel count raises.
        ``with_ood``: return ``(probs, ood_score (N,) or None)``.
        """
        check_choice("tta", tta, TTA_MODES)
        check_choice("merge", merge, MERGES)
        b = np.asarray(batch)
        if b.ndim == 3:
            b = b[None]
        if b.ndim != 4:
            raise InputError("batch", expected="a uint8 array (N, H, W, C)", got=f"shape {b.shape}",
                             fix="stack images along a first axis")
        pre = self.preprocessing
        if b.shape[1:] != (pre.size, pre.size, pre.in_chans) or b.dtype != np.uint8:
            b = np.stack([self._prepare(x, f"image {i}") for i, x in enumerate(b)])
        out = np.empty((len(b), len(self.classes)), np.float32)
        ood = np.empty(len(b), np.float32) if (with_ood and self.ood) else None
        step = self._step(len(b), batch_size)
        starts = range(0, len(b), step)
        for s, (p, o) in zip(starts, self._ordered(
                lambda s: self._forward(b[s:s + step], tta=tta, merge=merge, ood=ood is not None), starts)):
            out[s:s + step] = p
            if ood is not None:
                ood[s:s + step] = o
        return (out, ood) if with_ood else out

    def _step(self, n: int, batch_size: int) -> int:
        """Images per work item: at most ``batch_size``, and small enough that every worker
        gets one when there are few images."""
        bs = max(1, int(batch_size))
        if self._serial or self.threads == 1:
            return bs
        return max(1, min(bs, -(-n // self.threads)))

    def _ood_scores(self, b: np.ndarray, feats: list) -> np.ndarray:
        """The images' OOD score from each fold model's pooled features (:mod:`protloc.core.ood`)."""
        from protloc.core.ood import combine_folds, image_stats

        stats = image_stats(b)
        return combine_folds([d.score(f, stats) for d, f in zip(self.ood, feats)])

    def _forward(self, b: np.ndarray, *, tta: str, merge: str, ood: bool = False):
        """uint8 (n, H, W, C) -> (merged probabilities (n, C), OOD scores (n,) when ``ood`` else
        None): the TTA views of up to :data:`CALL_IMAGES` view-images go through the model in one
        call; the OOD score compares the un-augmented view's pooled features."""
        ood = bool(ood and self.ood)
        n_views = len(tta_views(np.zeros((1, 1, 1, 1)), tta))
        step = max(1, CALL_IMAGES // n_views)
        if len(b) > step:
            parts = [self._forward(b[s:s + step], tta=tta, merge=merge, ood=ood) for s in range(0, len(b), step)]
            return (np.concatenate([p for p, _ in parts]),
                    np.concatenate([o for _, o in parts]) if ood else None)
        x = self.preprocessing.normalize(b)
        n = len(x)
        xv = np.concatenate(tta_views(x, tta)) if n_views > 1 else x
        if self.engine == "onnx":
            names = ["fold_probs", "features"] if ood else ["fold_probs"]
            got = self._session.run(names, {"input": np.ascontiguousarray(xv)})
            fold_probs = got[0]
            stack = fold_probs.reshape(n_views, n, *fold_probs.shape[1:])            # (V, n, F, C)
            stack = np.moveaxis(stack, 2, 1).reshape(-1, n, fold_probs.shape[-1])  # (V*F, n, C)
            feats = list(np.moveaxis(got[1][:n], 1, 0)) if ood else None          # view 0: (F, n, D)
            return merge_probs(stack, merge), (self._ood_scores(b, feats) if ood else None)
        probs, feats = self._forward_torch(xv, n_views=n_views, n=n, merge=merge, features=ood)
        return probs, (self._ood_scores(b, feats) if ood else None)

    def _forward_torch(self, xv: np.ndarray, *, n_views: int, n: int, merge: str, features: bool = False):
        import torch

        lock = self._engine_lock if self._serial else contextlib.nullcontext()
        with lock, torch.inference_mode():
            xt = torch.from_numpy(xv).to(self.device, non_blocking=True)
            xt = xt.contiguous(memory_format=torch.channels_last)
            probs, feats = [], []
            for m in self._models:
                with torch.autocast("cuda", dtype=torch.float16, enabled=self._cuda):
                    if features:  # the un-augmented view's pooled features (the first n rows)
                        logits, f = m.forward_with_features(xt)
                        feats.append(f[:n].float().cpu().numpy())
                    else:
                        logits = m(xt)
                    probs.append(torch.sigmoid(logits.float()))
            stack = torch.stack(probs).reshape(len(probs) * n_views, n, -1)       # (F*V, n, C)
            out = stack.mean(0) if merge == "mean" else stack.amax(0)
            return out.cpu().numpy().astype(np.float32), (feats if features else None)

    # ------------------------------------------------------------------------------------
    def labels_from_probs(self, probs, *, at_least_one: bool | None = None):
        """Apply the run's thresholds: (label id lists, label strings)."""
        hot = self.threshold_rule.apply(probs, at_least_one=at_least_one)
        labels = [np.flatnonzero(r).tolist() for r in hot]
        return labels, [" ".join(map(str, ls)) for ls in labels]

    def _result(self, ids, probs, *, at_least_one, skipped=(), ood=None) -> PredictionResult:
        labels, strings = self.labels_from_probs(probs, at_least_one=at_least_one)
        return PredictionResult(ids=list(ids), probs=probs, labels=labels, label_strings=strings,
                                classes=list(self.classes), skipped=list(skipped), ood_score=ood,
                                notes=self.notes())

    def predict(self, images, *, tta: str = "none", merge: str = "mean", batch_size: int = 64,
                progress: bool = False, at_least_one: bool | None = None) -> PredictionResult:
        """Predict file paths, (H, W, C) arrays or one (N, H, W, C) array.

        Examples
        --------
        >>> pred = Predictor.from_run("runs/r1")  # doctest: +SKIP
        >>> res = pred.predict(["cell1.png", "cell2.png"], tta="d4")  # doctest: +SKIP
        >>> res.label_strings  # doctest: +SKIP
        ['4', '1 6']
        """
        from protloc.core.progress import progress_bar

        check_choice("tta", tta, TTA_MODES)
        check_choice("merge", merge, MERGES)
        ids, seq = as_items(images)
        step = self._step(len(seq), batch_size)
        probs = np.empty((len(seq), len(self.classes)), np.float32)
        ood = np.empty(len(seq), np.float32) if self.ood else None

        def work(s):
            _, b = self._as_batch(seq[s:s + step])
            return len(b), self._forward(b, tta=tta, merge=merge, ood=ood is not None)

        starts = range(0, len(seq), step)
        with progress_bar(total=len(seq), description="predict", enable=progress) as advance:
            for s, (k, (p, o)) in zip(starts, self._ordered(work, starts)):
                probs[s:s + k] = p
                if ood is not None:
                    ood[s:s + k] = o
                advance(k)
        return self._result(ids, probs, at_least_one=at_least_one, ood=ood)

    def predict_table(self, table, *, tta: str = "none", merge: str = "mean", batch_size: int = 64,
                      progress: bool = False, on_error: str = "raise", at_least_one: bool | None = None,
                      channels_chosen: bool | None = None) -> PredictionResult:
        """Predict every image of a :class:`~protloc.data.table.DataTable`, streaming in chunks.

        Each worker thread decodes a chunk and runs the model on it; at most 2 chunks per
        worker are in memory at a time, so memory does not grow with the table.
        ``on_error='skip'`` leaves unreadable or missing images out and lists them in
        ``result.skipped``; ``'raise'`` (default) stops with an error naming the file.
        ``channels_chosen``: the table's TIFF channels were chosen by the user (``--channels``),
        so a wider TIFF is cut to them; otherwise it must have the run's channel count. None:
        chosen when they differ from the default choice.
        """
        from protloc.core.progress import progress_bar

        check_choice("tta", tta, TTA_MODES)
        check_choice("merge", merge, MERGES)
        check_choice("on_error", on_error, ("raise", "skip"))
        check_table(table, self.preprocessing)
        n = len(table)
        bs = self._step(n, batch_size)
        bad, skipped = find_missing(table, on_error=on_error)
        if channels_chosen is None:
            from protloc.data.table import normalize_channels

            channels_chosen = tuple(table.channels) != normalize_channels(table.fmt, None)
        read = partial(self._read_row, channels_chosen=channels_chosen)
        load = partial(load_chunk, table, size=bs, bad=bad, on_error=on_error, read=read)

        probs = np.full((n, len(self.classes)), np.nan, np.float32)
        ood = np.full(n, np.nan, np.float32) if self.ood else None

        def work(s):
            keep, b, errs = load(s)
            return keep, (self._forward(b, tta=tta, merge=merge, ood=ood is not None) if b is not None else None), errs
        ok = np.zeros(n, bool)
        starts = range(0, n, bs)
        with progress_bar(total=n, description="predict", enable=progress) as advance:
            for s, (keep, p, errs) in zip(starts, self._ordered(work, starts)):
                skipped.extend(errs)
                if p is not None:
                    probs[keep] = p[0]
                    if ood is not None:
                        ood[keep] = p[1]
                    ok[keep] = True
                advance(min(bs, n - s))
        if not ok.any():
            raise InputError(f"{table.images}: none of the {n} images could be read", fix="check "
                             "--images, --format and the files")
        idx = np.flatnonzero(ok)
        pos = {iid: k for k, iid in enumerate(table.ids)}
        skipped.sort(key=lambda t: pos.get(t[0], 0))
        return self._result([table.ids[i] for i in idx], probs[idx], at_least_one=at_least_one,
                            skipped=skipped, ood=None if ood is None else ood[idx])

