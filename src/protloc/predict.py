"""Prediction from a run folder: fold ensembles, test-time augmentation, labels.

:class:`Predictor` rebuilds everything from the run folder (preprocessing, fold models,
thresholds) and turns images into probabilities and label sets.

Inputs and checks
-----------------
``images`` may be file paths (PNG/JPEG/TIFF; for an ``hpa-channels`` run, ``DIR/ID`` meaning
``DIR/ID_red.png`` ...), (H, W, C) arrays, or one (N, H, W, C) uint8 array. Each image is checked
against the run: a different channel count is an :class:`~protloc.errors.InputError` naming the
file; a different image size is **resized** to the run's size (area averaging when shrinking,
bilinear when enlarging) with a one-time warning, because the model only saw that size.
16-bit or float data is converted to uint8 as in training (:func:`protloc.imageio.to_uint8`).

Ensembling and TTA
------------------
Every ``RUN/models/fold*.pt`` is loaded (``folds=`` picks a subset). ``tta='d4'`` runs the 8
flips/rotations of the square image (deterministic), ``'flip'`` the identity and the horizontal
flip, ``'none'`` the image alone. Probabilities (after the sigmoid) are merged over views and
folds with ``merge='mean'`` (default) or ``'max'``.

Engines
-------
``torch`` (default): CUDA with AMP (float16) when available, else CPU float32; channels_last
memory layout on both; always under ``torch.inference_mode()``. ``onnx``: onnxruntime on ``RUN/model.onnx`` written by
``protloc export`` (float NCHW normalised input, sigmoid probabilities out); same numbers as
torch within 1e-4.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from protloc.errors import InputError, RunFolderError, fmt_problem
from protloc.preprocessing import Preprocessing
from protloc.runfolder import RunFolder
from protloc.thresholds import apply_thresholds, check_thresholds

TTA_MODES = ("none", "flip", "d4")
MERGES = ("mean", "max")
ENGINES = ("torch", "onnx")

__all__ = ["Predictor", "PredictionResult", "d4_views", "tta_views", "merge_probs", "ENGINES",
           "TTA_MODES", "MERGES"]


# --------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------
def d4_views(x):
    """The 8 dihedral views (4 rotations x optional horizontal flip) of a batch (N, C, H, W).

    Works on torch tensors and numpy arrays; the order is fixed (deterministic): view ``k`` is
    ``k % 4`` quarter turns then a horizontal flip when ``k >= 4`` (``protloc.augment.d4``, which
    is reused for tensors), so view 0 is the input itself.

    Examples
    --------
    >>> v = d4_views(np.arange(4).reshape(1, 1, 2, 2))
    >>> len(v), v[0].ravel().tolist(), v[1].ravel().tolist()
    (8, [0, 1, 2, 3], [1, 3, 0, 2])
    """
    if isinstance(x, np.ndarray):
        rot = [np.rot90(x, k, axes=(2, 3)) for k in range(4)]
        return rot + [np.flip(r, axis=3) for r in rot]
    try:  # the training engine's helper (same element order: k%4 quarter turns, flip if k>=4)
        from protloc.augment import d4
    except ImportError:
        d4 = None
    if d4 is not None:
        return [d4(x, k) for k in range(8)]
    import torch

    rot = [torch.rot90(x, k, dims=(2, 3)) if k else x for k in range(4)]
    return rot + [torch.flip(r, dims=(3,)) for r in rot]


def tta_views(x, tta: str = "none"):
    """Views of a (N, C, H, W) batch for ``tta`` in {'none', 'flip', 'd4'}.

    Examples
    --------
    >>> [len(tta_views(np.zeros((1, 1, 4, 4)), t)) for t in TTA_MODES]
    [1, 2, 8]
    """
    _check_choice("tta", tta, TTA_MODES)
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, np.flip(x, axis=3) if isinstance(x, np.ndarray) else x.flip(3)]
    return d4_views(x)


def merge_probs(stack: np.ndarray, merge: str = "mean") -> np.ndarray:
    """Merge probabilities (K, N, C) over the first axis (views x folds) -> (N, C) float32.

    Examples
    --------
    >>> merge_probs(np.array([[[0.2]], [[0.6]]]), "max").tolist()
    [[0.6000000238418579]]
    """
    _check_choice("merge", merge, MERGES)
    s = np.asarray(stack, dtype=np.float32)
    return (s.mean(0) if merge == "mean" else s.max(0)).astype(np.float32)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise InputError(fmt_problem(name, expected=f"one of {', '.join(choices)}", got=repr(value),
                                     fix=f"use {name}={choices[0]!r}"))


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
    """

    ids: list
    probs: np.ndarray
    labels: list
    label_strings: list
    classes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def submission_frame(self):
        """``Image,Label`` DataFrame in the competition format."""
        import pandas as pd

        return pd.DataFrame({"Image": list(self.ids), "Label": list(self.label_strings)})

    def probs_frame(self):
        """``Image`` + one column per class name."""
        import pandas as pd

        df = pd.DataFrame(self.probs, columns=list(self.classes))
        df.insert(0, "Image", list(self.ids))
        return df


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
    models : list of nn.Module  (torch engine; empty for onnx)
    folds : list of int         fold numbers in the ensemble
    engine, device : str
    """

    def __init__(self, preprocessing: Preprocessing, models=(), *, thresholds=None,
                 at_least_one: bool = False, device=None, engine: str = "torch", onnx_session=None,
                 folds=None, root: Path | None = None):
        _check_choice("engine", engine, ENGINES)
        self.preprocessing = preprocessing
        self.classes = list(preprocessing.classes)
        c = len(self.classes)
        self.thresholds = (np.full(c, 0.5) if thresholds is None
                           else check_thresholds(thresholds, c, where="thresholds.json"))
        self.at_least_one = bool(at_least_one)
        self.engine = engine
        self.models = list(models)
        self.folds = list(folds) if folds is not None else list(range(len(self.models)))
        self.root = root
        self._session = onnx_session
        self._warned_resize = False
        if engine == "torch":
            import torch

            if not self.models:
                raise RunFolderError("no models to predict with. Fix: point to a trained run folder")
            self.device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
            self._cuda = self.device.startswith("cuda")
            for m in self.models:  # channels_last: faster convolutions on CUDA and on CPU (oneDNN)
                m.eval().to(self.device).to(memory_format=torch.channels_last)
        else:
            self.device = "cpu" if device is None else str(device)
            self._cuda = False
            if onnx_session is None:
                raise RunFolderError("no ONNX session. Fix: use Predictor.from_run(RUN, engine='onnx')")

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, path, *, device=None, engine: str = "torch", folds=None,
                 onnx_path=None, threads: int | None = None) -> "Predictor":
        """Load ``RUN``: preprocessing, fold models (all by default) and thresholds.

        ``folds``: None (all), an int or a list of fold numbers. ``engine='onnx'`` loads
        ``RUN/model.onnx`` (or ``onnx_path``) written by ``protloc export`` and never imports
        torch. ``threads``: CPU threads (torch: ``torch.set_num_threads``, process-wide; onnx:
        the session's intra-op threads); None keeps the library default (all cores). On a busy
        shared machine fewer threads than cores can be much faster.
        """
        _check_choice("engine", engine, ENGINES)
        run = RunFolder(path).check(need_models=engine == "torch")
        pre = run.preprocessing()
        thr, alo = _read_thresholds(run, pre)
        want = None if folds is None else ([int(folds)] if np.isscalar(folds) else [int(f) for f in folds])
        if engine == "torch":
            from protloc.model import load_weights

            if threads:
                import torch

                torch.set_num_threads(int(threads))

            paths = {int(p.stem[4:]): p for p in run.model_paths() if p.stem[4:].isdigit()}
            use = sorted(paths) if want is None else want
            missing = [f for f in use if f not in paths]
            if missing:
                raise RunFolderError(fmt_problem(f"{run.root}", expected=f"models/fold{missing[0]}.pt",
                                                 got=f"folds {sorted(paths)}", fix="pick existing --folds"))
            models = [load_weights(paths[f]) for f in use]
            for f, m in zip(use, models):
                if m.spec.in_chans != pre.in_chans or m.spec.num_classes != len(pre.classes):
                    raise RunFolderError(fmt_problem(f"{paths[f]}", expected=f"{pre.in_chans} input "
                                                     f"channels and {len(pre.classes)} classes "
                                                     "(preprocessing.json)",
                                                     got=f"{m.spec.in_chans} and {m.spec.num_classes}",
                                                     fix="keep the run folder's files together"))
            return cls(pre, models, thresholds=thr, at_least_one=alo, device=device, engine="torch",
                       folds=use, root=run.root)
        from protloc.onnx_export import load_onnx

        onnx_file = Path(onnx_path) if onnx_path else run.root / "model.onnx"
        session, meta = load_onnx(onnx_file, device=device, threads=threads)
        have = list(meta.get("folds", []))
        if want is not None and sorted(want) != sorted(have):
            raise InputError(fmt_problem(f"{onnx_file}", expected=f"an export of folds {want}",
                                         got=f"folds {have}",
                                         fix=f"run `protloc export {run.root} --fold {want[0]}`"))
        if meta.get("preprocessing") and Preprocessing.from_dict(meta["preprocessing"]) != pre:
            raise RunFolderError(fmt_problem(f"{onnx_file}", expected="the run's preprocessing",
                                             got="a different one (exported from another run?)",
                                             fix=f"re-export with `protloc export {run.root}`"))
        return cls(pre, (), thresholds=thr, at_least_one=alo, device=device, engine="onnx",
                   onnx_session=session, folds=have, root=run.root)

    # ------------------------------------------------------------------------------------
    def _prepare(self, img, where: str) -> np.ndarray:
        """Check one (H, W, C) image's channels; resize (warn once) to the run's size."""
        a = np.asarray(img)
        if a.ndim == 3 and a.shape[:2] != (self.preprocessing.size, self.preprocessing.size) \
                and a.shape[2] == self.preprocessing.in_chans and not self._warned_resize:
            self._warned_resize = True
            warnings.warn(f"{where}: image size {a.shape[1]}x{a.shape[0]} differs from the run's "
                          f"{self.preprocessing.size}x{self.preprocessing.size}; images are resized "
                          "(shown once)", UserWarning, stacklevel=4)
        return self.preprocessing.check_array(a, where=where)

    def read_file(self, path) -> np.ndarray:
        """Read one image file as the run expects it: uint8 (size, size, in_chans)."""
        from protloc import imageio

        p = Path(path)
        pre = self.preprocessing
        if pre.fmt == "hpa-channels" and not p.is_file():
            a = imageio.read_hpa_channels(p.parent, p.name, channels=pre.channels)
        else:
            a = imageio.read_array(p)
            if a.ndim == 3 and a.shape[2] == 4 and pre.in_chans == 3 and p.suffix.lower() not in imageio.TIFF_EXTS:
                a = a[..., :3]  # RGBA PNG: drop alpha as in training
            if a.ndim == 3 and pre.fmt == "tiff" and a.shape[2] > pre.in_chans:
                idx = [int(str(c).removeprefix("ch")) for c in pre.channels]
                if max(idx) < a.shape[2]:
                    a = a[..., idx]
        return self._prepare(a, str(p))

    def _as_batch(self, images) -> tuple[list[str], np.ndarray]:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            items = list(images)
            ids = [str(i) for i in range(len(items))]
        elif isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            return self._as_batch([images])
        else:
            items = list(images)
            ids = [Path(x).stem if isinstance(x, (str, Path)) else str(i) for i, x in enumerate(items)]
        if not items:
            raise InputError(fmt_problem("images", expected="at least one image", got="none",
                                         fix="pass file paths or arrays"))
        out = np.empty((len(items), self.preprocessing.size, self.preprocessing.size,
                        self.preprocessing.in_chans), np.uint8)
        for i, x in enumerate(items):
            if isinstance(x, (str, Path)):
                out[i] = self.read_file(x)
            else:
                out[i] = self._prepare(x, f"image {i}")
        return ids, out

    # ------------------------------------------------------------------------------------
    def predict_array(self, batch, *, tta: str = "none", merge: str = "mean",
                      batch_size: int = 64) -> np.ndarray:
        """uint8 (N, H, W, C) -> probabilities (N, C) float32 (the core; web/explain use it).

        Images of another size are resized (one warning); a wrong channel count raises.
        """
        _check_choice("tta", tta, TTA_MODES)
        _check_choice("merge", merge, MERGES)
        b = np.asarray(batch)
        if b.ndim == 3:
            b = b[None]
        if b.ndim != 4:
            raise InputError(fmt_problem("batch", expected="a uint8 array (N, H, W, C)", got=f"shape {b.shape}",
                                         fix="stack images along a first axis"))
        pre = self.preprocessing
        if b.shape[1:] != (pre.size, pre.size, pre.in_chans) or b.dtype != np.uint8:
            b = np.stack([self._prepare(x, f"image {i}") for i, x in enumerate(b)])
        out = np.empty((len(b), len(self.classes)), np.float32)
        bs = max(1, int(batch_size))
        for s in range(0, len(b), bs):
            out[s:s + bs] = self._forward(b[s:s + bs], tta=tta, merge=merge)
        return out

    def _forward(self, b: np.ndarray, *, tta: str, merge: str) -> np.ndarray:
        x = self.preprocessing.normalize(b)
        if self.engine == "onnx":
            stack = []
            for v in tta_views(x, tta):
                fold_probs = self._session.run(["fold_probs"], {"input": np.ascontiguousarray(v)})[0]
                stack.extend(np.moveaxis(fold_probs, 1, 0))
            return merge_probs(np.stack(stack), merge)
        import torch

        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device, non_blocking=True)
            acc = None
            n = 0
            for v in tta_views(xt, tta):
                v = v.contiguous(memory_format=torch.channels_last)
                for m in self.models:
                    with torch.autocast("cuda", dtype=torch.float16, enabled=self._cuda):
                        p = torch.sigmoid(m(v).float())
                    if acc is None:
                        acc = p.clone()
                    elif merge == "mean":
                        acc += p
                    else:
                        acc = torch.maximum(acc, p)
                    n += 1
            if merge == "mean":
                acc /= n
            return acc.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------------------------
    def labels_from_probs(self, probs, *, at_least_one: bool | None = None):
        """Apply the run's thresholds: (label id lists, label strings)."""
        alo = self.at_least_one if at_least_one is None else bool(at_least_one)
        hot = apply_thresholds(probs, self.thresholds, at_least_one=alo)
        labels = [np.flatnonzero(r).tolist() for r in hot]
        return labels, [" ".join(map(str, ls)) for ls in labels]

    def _result(self, ids, probs, *, at_least_one, skipped=()) -> PredictionResult:
        labels, strings = self.labels_from_probs(probs, at_least_one=at_least_one)
        return PredictionResult(ids=list(ids), probs=probs, labels=labels, label_strings=strings,
                                classes=list(self.classes), skipped=list(skipped))

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
        from protloc.progress import progress_bar

        if isinstance(images, np.ndarray) and images.ndim == 4:
            seq, ids = images, [str(i) for i in range(len(images))]
        else:
            seq = [images] if isinstance(images, (str, Path)) or (
                isinstance(images, np.ndarray) and images.ndim in (2, 3)) else list(images)
            ids = [Path(x).stem if isinstance(x, (str, Path)) else str(i) for i, x in enumerate(seq)]
        if len(seq) == 0:
            raise InputError(fmt_problem("images", expected="at least one image", got="none",
                                         fix="pass file paths or arrays"))
        bs = max(1, int(batch_size))
        probs = np.empty((len(seq), len(self.classes)), np.float32)
        with progress_bar(total=len(seq), description="predict", enable=progress) as advance:
            for s in range(0, len(seq), bs):
                _, b = self._as_batch(seq[s:s + bs])
                probs[s:s + bs] = self._forward(b, tta=tta, merge=merge)
                advance(len(b))
        return self._result(ids, probs, at_least_one=at_least_one)

    def predict_table(self, table, *, tta: str = "none", merge: str = "mean", batch_size: int = 64,
                      progress: bool = False, on_error: str = "raise", at_least_one: bool | None = None,
                      ) -> PredictionResult:
        """Predict every image of a :class:`~protloc.table.DataTable`, streaming in chunks.

        Only two chunks of images are in memory at a time (the next one is decoded in a thread
        while the model runs), so memory does not grow with the table. ``on_error='skip'``
        leaves unreadable or missing images out and lists them in ``result.skipped``;
        ``'raise'`` (default) stops with an error naming the file.
        """
        from protloc.imageio import read_image
        from protloc.progress import progress_bar

        _check_choice("tta", tta, TTA_MODES)
        _check_choice("merge", merge, MERGES)
        _check_choice("on_error", on_error, ("raise", "skip"))
        pre = self.preprocessing
        if table.n_channels != pre.in_chans:
            raise InputError(fmt_problem(f"{table.images} ({table.fmt}, channels "
                                         f"{', '.join(map(str, table.channels))})",
                                         expected=f"{pre.in_chans} channels "
                                                  f"({', '.join(map(str, pre.channels))}) like the run",
                                         got=f"{table.n_channels}",
                                         fix="pass --channels in the run's order"))
        if table.fmt == pre.fmt == "hpa-channels" and tuple(table.channels) != tuple(pre.channels):
            raise InputError(fmt_problem("--channels", expected=f"{','.join(pre.channels)} (the run's "
                                         "channels, in its order)", got=",".join(table.channels),
                                         fix=f"pass --channels {','.join(pre.channels)}"))
        if table.labels is not None and tuple(table.schema.classes) != tuple(pre.classes):
            raise InputError(fmt_problem(f"label schema {table.schema.name!r} of {table.csv_path or table.images}",
                                         expected=f"the run's schema {pre.schema.name!r} "
                                                  f"({len(pre.classes)} classes)",
                                         got=f"{len(table.schema.classes)} classes",
                                         fix=f"pass --schema {pre.schema.name} (or the run's schema file)"))
        n = len(table)
        bs = max(1, int(batch_size))
        skipped: list[tuple[str, str]] = []
        missing = [i for i in range(n) if not all(Path(f).is_file() for f in table.files(i))]
        if missing and on_error == "raise":
            i = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{table.where(i)}: image file missing: {table.files(i)[0]}{more}. "
                             "Fix: check --images and the ids, or pass --skip-bad")
        bad = set(missing)
        for i in missing:
            skipped.append((table.ids[i], f"{table.where(i)}: image file missing"))

        def load(start: int):
            imgs, keep, errs = [], [], []
            for i in range(start, min(start + bs, n)):
                if i in bad:
                    continue
                try:
                    a = read_image(table.images, table.ids[i], fmt=table.fmt, channels=table.channels)
                    imgs.append(self._prepare(a, f"{table.where(i)} ({table.files(i)[0]})"))
                    keep.append(i)
                except InputError as e:
                    if on_error == "raise":
                        raise
                    errs.append((table.ids[i], f"{table.where(i)}: {e}"))
            return keep, (np.stack(imgs) if imgs else None), errs

        probs = np.full((n, len(self.classes)), np.nan, np.float32)
        ok = np.zeros(n, bool)
        with progress_bar(total=n, description="predict", enable=progress) as advance, \
                cf.ThreadPoolExecutor(1) as pool:
            starts = list(range(0, n, bs))
            fut = pool.submit(load, starts[0]) if starts else None
            for j, s in enumerate(starts):
                keep, b, errs = fut.result()
                fut = pool.submit(load, starts[j + 1]) if j + 1 < len(starts) else None
                skipped.extend(errs)
                if b is not None:
                    probs[keep] = self._forward(b, tta=tta, merge=merge)
                    ok[keep] = True
                advance(min(bs, n - s))
        if not ok.any():
            raise InputError(f"{table.images}: none of the {n} images could be read. Fix: check "
                             "--images, --format and the files")
        idx = np.flatnonzero(ok)
        pos = {iid: k for k, iid in enumerate(table.ids)}
        skipped.sort(key=lambda t: pos.get(t[0], 0))
        return self._result([table.ids[i] for i in idx], probs[idx], at_least_one=at_least_one,
                            skipped=skipped)


def _read_thresholds(run: RunFolder, pre: Preprocessing):
    """(thresholds or None, at_least_one) from RUN/thresholds.json, checked against the schema."""
    if not run.thresholds_json.is_file():
        return None, False
    try:
        d = json.loads(run.thresholds_json.read_text())
    except ValueError as e:
        raise RunFolderError(f"{run.thresholds_json}: malformed ({e}). Fix: rerun `protloc thresholds "
                             f"{run.root}`") from None
    classes = d.get("classes")
    if classes and list(classes) != list(pre.classes):
        raise RunFolderError(fmt_problem(f"{run.thresholds_json}", expected=f"classes {list(pre.classes)}",
                                         got=f"{classes}", fix=f"rerun `protloc thresholds {run.root}`"))
    thr = check_thresholds(d.get("thresholds", []), len(pre.classes), where=str(run.thresholds_json))
    return thr, bool(d.get("at_least_one", False))
