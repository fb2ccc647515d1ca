"""The run folder: the one artifact from which predict, evaluate, explain, report, CLI and web
rebuild everything. :class:`RunFolder` is its contract: one typed reader (and writer) per file,
so every command reads each fact the same way and a damaged file is one clear
:class:`~protloc.core.errors.RunFolderError` naming the file and the fix.

Layout::

    RUN/
      config.yaml            fully resolved training config          config() -> TrainConfig
      preprocessing.json     format, typed channels, size, mean/std,  preprocessing() -> Preprocessing
                             label schema
      schema.json            the label schema alone (for --schema     schema() (checked against
                             RUN/schema.json in other commands)        preprocessing.json)
      model.json             ModelSpec (timm backbone, in_chans, head) model_spec() -> ModelSpec
      data.json              where the training data came from         data_source() -> DataSource
                             (CSV, images, format, channels, columns,  (None for runs made before
                             schema, number of images)                 it was recorded)
      splits.csv             Image,fold (validation fold of each training image)
      checkpoints/fold{k}/   Lightning checkpoints: best.ckpt, last.ckpt  ckpt_dir(k)
      models/fold{k}.pt      best weights of fold k (ensembled)        folds(), model_path(k)
      models/fold{k}.ood.npz what fold k's typical inputs look like     ood(folds) -> [OODDetector]
                             (features + pixel statistics, threshold   (None for runs made before it)
                             calibrated on its validation images)
      folds/fold{k}/         per-fold oof.csv, metrics.csv,            fold_dir(k), fold_results()
                             summary.json (merged into the files below; folds trained on other
                             machines are merged with --merge)
      metrics.csv            per-epoch metrics of every fold (fold column)
      oof.csv                out-of-fold probabilities: Image, fold,   oof() -> OOF
                             Label (truth), <class names...>
      summary.json           final validation metrics per fold and     summary() -> RunSummary | None
                             overall OOF
      thresholds.json        per-class thresholds + diagnostics        thresholds() -> RunThresholds
                             (protloc thresholds; absent: 0.5 for every class, said so)
      evaluation.json        last `protloc evaluate` result (optional) evaluation_json
      model.onnx(.json)      ONNX export + its preprocessing and the   onnx_path, onnx_meta_path,
                             fingerprint of the weights it came from    onnx_file(folds, int8=)
                             (protloc export, or cached by predict;
                             model.int8.onnx: quantised, export --int8;
                             model.folds-0-2.onnx: a fold subset)
      train.log              log
      logs/{csv,tensorboard}/fold{k}/  --logger csv|tensorboard       logs_dir
      mlflow/                --logger mlflow: mlflow.db + artifacts    mlflow_dir
      .launch/ID.json        rank 0's "data setup done" marker of     launch_marker(launch)
                             launch ID (protloc.cluster.handshake)
      report.html            evaluation report (protloc report)        report_html

Policies: a missing optional file has a documented meaning (no thresholds.json: 0.5 for every
class; no data.json: the training data is unknown; no summary.json: no summary); a file that is
present but unreadable, of the wrong shape or inconsistent with the run is a RunFolderError.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from protloc.core.errors import InputError, RunFolderError
from protloc.core.paths import path_kind
from protloc.core.preprocessing import Preprocessing

__all__ = ["RunFolder", "RunThresholds", "DataSource", "RunSummary", "OOF", "parse_folds",
           "onnx_meta_path"]

_FOLD = re.compile(r"fold(\d+)")


def parse_folds(value, *, flag: str = "--folds") -> list[int] | None:
    """Fold numbers from None/'all' (None: every fold), an int, ``"0,2"`` or a list.

    Examples
    --------
    >>> parse_folds("0, 2"), parse_folds(1), parse_folds("all")
    ([0, 2], [1], None)
    >>> parse_folds("x")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --folds: expected comma-separated fold numbers, got 'x'. Fix: e.g. --folds 0,1.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "all")):
        return None
    items = value.split(",") if isinstance(value, str) else ([value] if np.isscalar(value) else list(value))
    try:
        out = [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        out = []
    if not out or min(out) < 0:
        raise InputError(flag, expected="comma-separated fold numbers", got=repr(value),
                         fix=f"e.g. {flag} 0,1")
    return out


def onnx_meta_path(onnx_path) -> Path:
    """The sidecar of an ONNX export: ``model.onnx`` -> ``model.onnx.json``.

    Examples
    --------
    >>> onnx_meta_path("runs/r1/model.onnx").name
    'model.onnx.json'
    """
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


# --------------------------------------------------------------------------------------------
# typed contents
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RunThresholds:
    """The decision rule of a run: per-class thresholds and the at-least-one rule.

    Attributes
    ----------
    values : ndarray (C,) float64 in [0, 1]
    at_least_one : bool      an image with no class above threshold gets its most probable class
    method : str or None     the fitting method (None: no thresholds.json)
    source : str             ``'thresholds.json'`` or ``'default 0.5'`` (no thresholds.json)
    optimizer : ThresholdOptimizer or None   the fitted optimizer with its per-class diagnostics

    Examples
    --------
    >>> t = RunThresholds.default(3)
    >>> t.source, t.apply(np.array([[0.2, 0.7, 0.1], [0.1, 0.2, 0.3]]), at_least_one=True).tolist()
    ('default 0.5', [[0, 1, 0], [0, 0, 1]])
    """

    values: np.ndarray
    at_least_one: bool = False
    method: str | None = None
    source: str = "default 0.5"
    optimizer: object = None

    @classmethod
    def default(cls, n_classes: int) -> "RunThresholds":
        return cls(values=np.full(n_classes, 0.5))

    @property
    def fitted(self) -> bool:
        return self.optimizer is not None

    def per_class(self) -> list[dict]:
        """The diagnostics rows of ``protloc thresholds`` (empty for the 0.5 default)."""
        return self.optimizer.per_class() if self.optimizer is not None else []

    def apply(self, probs, *, at_least_one: bool | None = None) -> np.ndarray:
        """Labels (N, C) uint8 from probabilities: the rule predict, evaluate and report share."""
        from protloc.core.thresholds import apply_thresholds

        alo = self.at_least_one if at_least_one is None else bool(at_least_one)
        return apply_thresholds(probs, self.values, at_least_one=alo)


@dataclass(frozen=True)
class DataSource:
    """Where a run's training data came from (``RUN/data.json``, written by ``protloc train``).

    Examples
    --------
    >>> d = DataSource(images="/data/train", fmt="tiff", channels=(0, 2), schema="ghent10", n_images=40)
    >>> import json
    >>> DataSource.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    True
    """

    images: str
    fmt: str
    channels: tuple
    schema: str
    n_images: int
    csv: str | None = None
    id_col: str | None = None
    label_col: str | None = None
    from_schema: str | None = None

    @classmethod
    def from_table(cls, table, *, id_col: str | None = None, label_col: str | None = None,
                   from_schema: str | None = None) -> "DataSource":
        """The data source of a :class:`~protloc.data.table.DataTable` (absolute paths)."""
        from protloc.core.preprocessing import typed_channels

        return cls(images=str(Path(table.images).resolve()), fmt=table.fmt,
                   channels=typed_channels(table.fmt, table.channels), schema=table.schema.name,
                   n_images=len(table), csv=str(Path(table.csv_path).resolve()) if table.csv_path else None,
                   id_col=id_col, label_col=label_col, from_schema=from_schema)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataSource":
        from protloc.core.preprocessing import typed_channels

        return cls(images=str(d["images"]), fmt=str(d["fmt"]),
                   channels=typed_channels(str(d["fmt"]), d["channels"]), schema=str(d["schema"]),
                   n_images=int(d["n_images"]), csv=d.get("csv"), id_col=d.get("id_col"),
                   label_col=d.get("label_col"), from_schema=d.get("from_schema"))


@dataclass(frozen=True)
class RunSummary:
    """``RUN/summary.json``: the merged validation results (written by ``protloc train``).

    Unset fields are None (runs may predate a field). ``fold_summaries`` holds each fold's
    summary (``n_train``, ``n_val``, ``best_epoch``...).
    """

    val_macro_f1: float | None = None
    val_macro_f1_best: float | None = None
    val_mAP: float | None = None
    val_micro_f1: float | None = None
    threshold: float | None = None
    monitor: str | None = None
    n_folds: int | None = None
    folds_done: list = field(default_factory=list)
    oof_images: int | None = None
    empty_classes: list = field(default_factory=list)
    fit_seconds: float | None = None
    wall_seconds: float | None = None
    fold_summaries: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSummary":
        return cls(**{f.name: d[f.name] for f in fields(cls) if d.get(f.name) is not None})

    @property
    def n_train(self) -> list[int]:
        """Training images of each finished fold."""
        return [int(f["n_train"]) for f in self.fold_summaries if isinstance(f, dict) and f.get("n_train")]

    @property
    def n_val(self) -> int:
        return sum(int(f.get("n_val", 0)) for f in self.fold_summaries if isinstance(f, dict))

    @property
    def oof_tta(self) -> str:
        """Test-time augmentation of the out-of-fold probabilities (``--oof-tta``): ``none``,
        ``flip``, ``d4``, or ``mixed`` when folds differ; ``none`` for runs that predate it.

        >>> RunSummary(fold_summaries=[{"oof_tta": "d4"}, {"oof_tta": "d4"}]).oof_tta, RunSummary().oof_tta
        ('d4', 'none')
        """
        seen = {f.get("oof_tta", "none") for f in self.fold_summaries if isinstance(f, dict)} or {"none"}
        return seen.pop() if len(seen) == 1 else "mixed"


class OOF(NamedTuple):
    """Out-of-fold predictions: ids, probabilities (N, C) float32, truth (N, C) multi-hot, folds (N,)."""

    ids: list
    probs: np.ndarray
    y: np.ndarray
    folds: np.ndarray


# --------------------------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFolder:
    """Paths, readers and writers of one run folder (see the module docstring for the layout).

    Examples
    --------
    >>> RunFolder("runs/r1").oof_csv.name, RunFolder("runs/r1").model_path(2).as_posix()
    ('oof.csv', 'runs/r1/models/fold2.pt')
    """

    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    # paths -------------------------------------------------------------------------------
    config_yaml = property(lambda self: self.root / "config.yaml")
    schema_json = property(lambda self: self.root / "schema.json")
    preprocessing_json = property(lambda self: self.root / "preprocessing.json")
    model_json = property(lambda self: self.root / "model.json")
    data_json = property(lambda self: self.root / "data.json")
    splits_csv = property(lambda self: self.root / "splits.csv")
    metrics_csv = property(lambda self: self.root / "metrics.csv")
    oof_csv = property(lambda self: self.root / "oof.csv")
    summary_json = property(lambda self: self.root / "summary.json")
    thresholds_json = property(lambda self: self.root / "thresholds.json")
    evaluation_json = property(lambda self: self.root / "evaluation.json")
    onnx_path = property(lambda self: self.root / "model.onnx")
    onnx_meta_path = property(lambda self: onnx_meta_path(self.root / "model.onnx"))
    log = property(lambda self: self.root / "train.log")
    report_html = property(lambda self: self.root / "report.html")
    models_dir = property(lambda self: self.root / "models")
    logs_dir = property(lambda self: self.root / "logs")
    mlflow_dir = property(lambda self: self.root / "mlflow")

    def onnx_file(self, folds=None, *, int8: bool = False) -> Path:
        """The ONNX export of ``folds`` (None: every fold, ``model.onnx``; a subset:
        ``model.folds-0-2.onnx``); ``int8``: its quantised copy (``model.int8.onnx``...).

        Examples
        --------
        >>> rf = RunFolder("r")
        >>> rf.onnx_file().name, rf.onnx_file([2, 0]).name, rf.onnx_file(int8=True).name
        ('model.onnx', 'model.folds-0-2.onnx', 'model.int8.onnx')
        """
        stem = "model" if folds is None else "model.folds-" + "-".join(str(int(f)) for f in sorted(folds))
        return self.root / f"{stem}{'.int8' if int8 else ''}.onnx"

    def ckpt_dir(self, fold: int) -> Path:
        return self.root / "checkpoints" / f"fold{fold}"

    def model_path(self, fold: int) -> Path:
        return self.models_dir / f"fold{fold}.pt"

    def launch_marker(self, launch) -> Path:
        """``.launch/ID.json``: rank 0's marker that the data setup of one launch is done
        (:mod:`protloc.cluster.handshake`; ``launch`` is a :class:`~protloc.cluster.Launch`)."""
        return self.root / ".launch" / f"{launch.safe_id}.json"

    def ood_path(self, fold: int) -> Path:
        """``models/fold{k}.ood.npz``: fold k's out-of-distribution reference (:mod:`protloc.core.ood`)."""
        return self.models_dir / f"fold{fold}.ood.npz"

    def fold_dir(self, fold: int) -> Path:
        """``folds/fold{k}/``: one fold's oof.csv, metrics.csv and summary.json."""
        return self.root / "folds" / f"fold{fold}"

    # folds -------------------------------------------------------------------------------
    @staticmethod
    def _numbers(paths, name) -> list[int]:
        found = (_FOLD.fullmatch(name(p)) for p in paths)
        return sorted(int(m.group(1)) for m in found if m)

    def folds(self) -> list[int]:
        """Fold numbers with a trained model (``models/fold{k}.pt``), sorted."""
        return self._numbers(self.models_dir.glob("fold*.pt"), lambda p: p.stem)

    def fold_results(self) -> list[int]:
        """Fold numbers with a ``folds/fold{k}/`` folder, sorted."""
        return self._numbers((p for p in (self.root / "folds").glob("fold*") if p.is_dir()), lambda p: p.name)

    def model_paths(self) -> list[Path]:
        """Fold model files, sorted by fold number."""
        return [self.model_path(k) for k in self.folds()]

    def select_folds(self, want=None, *, flag: str = "--folds") -> list[int]:
        """The trained folds to use: all (``want`` None/'all'), or the chosen ones, which must exist."""
        have = self.folds()
        use = parse_folds(want, flag=flag)
        if use is None:
            return have
        bad = [f for f in use if f not in have]
        if bad:
            raise RunFolderError(f"{self.root}", expected=f"models/fold{bad[0]}.pt",
                                 got=f"folds {have}", fix=f"pick existing {flag}")
        return use

    # checks ------------------------------------------------------------------------------
    def check(self, *, need_models: bool = True) -> "RunFolder":
        """Raise RunFolderError unless this looks like a usable run folder."""
        if not self.root.is_dir():
            raise RunFolderError(f"{self.root}: run folder not found", fix="pass the --out folder of "
                                 "`protloc train`")
        if not self.preprocessing_json.is_file():
            raise RunFolderError(f"{self.root}: not a run folder (no preprocessing.json)", fix="pass the "
                                 "--out folder of `protloc train`")
        if need_models and not self.folds():
            raise RunFolderError(f"{self.root}: no trained model in models/ (training unfinished?)",
                                 fix="finish training, or `protloc train ... --resume`")
        return self

    def _read_json(self, path: Path, *, what: str, fix: str, kind=None):
        """A run-folder JSON file through the checked reader (missing, empty, binary, invalid,
        wrong top-level type: a RunFolderError naming the file and the fix)."""
        from protloc.core.readers import read_json

        if path_kind(path) == "missing":
            raise RunFolderError(f"{path}: missing ({what})", fix=f"{fix}")
        return read_json(path, what=what, fix=fix, error=RunFolderError, kind=kind)

    def _read_csv(self, path: Path, *, what: str, fix: str, columns=(), columns_text=None, dtype=None):
        from protloc.core.readers import read_csv_frame

        return read_csv_frame(path, what=what, fix=fix, error=RunFolderError, columns=columns,
                              columns_text=columns_text, dtype=dtype)

    def _damaged(self, path: Path, e: Exception, fix: str) -> RunFolderError:
        detail = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
        return RunFolderError(f"{path}: unreadable ({detail})", fix=f"{fix}")

    # readers -----------------------------------------------------------------------------
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.load(self.preprocessing_json)

    def schema(self):
        """The label schema (from preprocessing.json), checked against ``schema.json`` if present."""
        pre = self.preprocessing()
        if self.schema_json.is_file():
            from protloc.core.schema import LabelSchema

            fix = "restore schema.json from the run, or delete it (preprocessing.json holds the schema)"
            d = self._read_json(self.schema_json, what="label schema", fix=fix, kind=dict)
            try:
                other = LabelSchema.from_dict(d, where=str(self.schema_json))
            except (InputError, KeyError, TypeError, AttributeError, ValueError) as e:
                raise self._damaged(self.schema_json, e, fix) from None
            if tuple(other.classes) != tuple(pre.classes):
                raise RunFolderError(str(self.schema_json), expected=f"the classes of "
                                     f"preprocessing.json ({len(pre.classes)}: {pre.schema.name})",
                                     got=f"{len(other.classes)} classes ({other.name})", fix=fix)
        return pre.schema

    def config(self):
        """The resolved training config (:class:`~protloc.core.config.TrainConfig`).

        Keys missing from an older file take their preset's defaults; a missing or damaged
        file is a RunFolderError.
        """
        from protloc.core.config import TrainConfig
        from protloc.core.readers import read_yaml

        fix = (f"restore {self.config_yaml.name} from the run (it is written by `protloc train`), or "
               "re-train")
        if path_kind(self.config_yaml) == "missing":
            raise RunFolderError(f"{self.config_yaml}: missing (the training config)", fix=f"{fix}")
        data = read_yaml(self.config_yaml, what="training config", fix=fix, error=RunFolderError, allow_empty=True)
        try:
            data = dict(data)
            return TrainConfig.preset(str(data.pop("preset", "default"))).override(**data)
        except (InputError, TypeError, ValueError) as e:  # bad values; not a mapping; non-string keys
            raise self._damaged(self.config_yaml, e, fix) from None

    def model_spec(self):
        """The network's :class:`~protloc.core.modelspec.ModelSpec` (``model.json``)."""
        from protloc.core.modelspec import ModelSpec

        fix = "restore model.json from the run (it is written by `protloc train`)"
        d = self._read_json(self.model_json, what="network description", fix=fix, kind=dict)
        try:
            return ModelSpec.from_dict(d)
        except (TypeError, ValueError) as e:
            raise self._damaged(self.model_json, e, fix) from None

    def ood(self, folds=None) -> list | None:
        """The :class:`~protloc.core.ood.OODDetector` of each of ``folds`` (default: all trained
        folds), or None when any of them has none (runs trained before protloc recorded it)."""
        from protloc.core.ood import OODDetector

        use = self.folds() if folds is None else list(folds)
        if not use or not all(self.ood_path(k).is_file() for k in use):
            return None
        return [OODDetector.load(self.ood_path(k)) for k in use]

    def data_source(self) -> DataSource | None:
        """Where the training data came from; None for runs trained before it was recorded."""
        if not self.data_json.is_file():
            return None
        fix = "restore data.json from the run, or delete it (it only records the training data)"
        d = self._read_json(self.data_json, what="training data source", fix=fix, kind=dict)
        try:
            return DataSource.from_dict(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise self._damaged(self.data_json, e, fix) from None

    def oof_tta(self) -> str:
        """Test-time augmentation of ``oof.csv`` (what thresholds fitted on it match): the
        summary's :attr:`RunSummary.oof_tta`, ``none`` when the run has no summary yet."""
        summary = self.summary()
        return summary.oof_tta if summary is not None else "none"

    def summary(self) -> RunSummary | None:
        """The merged validation summary; None when the run has none yet."""
        if not self.summary_json.is_file():
            return None
        fix = f"rebuild it with `protloc train --out {self.root} --merge`"
        d = self._read_json(self.summary_json, what="validation summary", fix=fix, kind=dict)
        try:
            return RunSummary.from_dict(d)
        except (TypeError, ValueError) as e:
            raise self._damaged(self.summary_json, e, fix) from None

    def thresholds(self) -> RunThresholds:
        """The run's decision rule; 0.5 for every class when there is no thresholds.json.

        A thresholds.json that is not valid JSON, not an object, has another class list or
        length, or values outside [0, 1] is a RunFolderError naming the file and the fix.
        """
        from protloc.core.thresholds import ThresholdOptimizer, check_thresholds

        classes = list(self.preprocessing().classes)
        path = self.thresholds_json
        if not path.is_file():
            return RunThresholds.default(len(classes))
        fix = f"rerun `protloc thresholds {self.root}` (or delete the file to use 0.5)"
        d = self._read_json(path, what="thresholds", fix=fix)
        if not isinstance(d, dict) or "thresholds" not in d:
            got = f"a JSON {type(d).__name__}" if not isinstance(d, dict) else f"keys {sorted(d)}"
            raise RunFolderError(str(path), expected="a JSON object with a 'thresholds' list",
                                 got=got, fix=fix)
        try:
            values = check_thresholds(d["thresholds"], len(classes), where=str(path))
        except InputError as e:
            raise RunFolderError(str(e)) from None
        except (TypeError, ValueError) as e:
            raise self._damaged(path, e, fix) from None
        if d.get("classes") is not None and list(d["classes"]) != classes:
            raise RunFolderError(str(path), expected=f"classes {classes}", got=f"{d['classes']}",
                                 fix=fix)
        try:
            opt = ThresholdOptimizer.from_dict(d)
        except (InputError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise self._damaged(path, e, fix) from None
        opt.classes_ = classes
        return RunThresholds(values=values, at_least_one=bool(opt.at_least_one), method=opt.method,
                             source="thresholds.json", optimizer=opt)

    def oof(self) -> OOF:
        """Out-of-fold ``(ids, probs (N,C), y (N,C) multi-hot, folds (N,))`` in class order."""
        if not self.oof_csv.is_file():
            raise RunFolderError(f"{self.oof_csv}: no out-of-fold probabilities", fix="train with "
                                 "validation (--folds K or the default holdout)")
        fix = f"rebuild it with `protloc train --out {self.root} --merge`, or re-run training"
        pre = self.preprocessing()
        classes = list(pre.classes)
        df = self._read_csv(self.oof_csv, what="out-of-fold probability CSV", fix=fix,
                            columns=("Image", "fold", "Label", *classes),
                            columns_text="Image, fold, Label and one per class", dtype={"Image": str, "Label": str})
        try:
            y = pre.schema.to_multihot([pre.schema.parse(t, where=f"{self.oof_csv} row {i + 2}")
                                        for i, t in enumerate(df["Label"].fillna("").astype(str))])
            probs = df[classes].to_numpy(np.float32)
            folds = df["fold"].to_numpy()
        except (InputError, ValueError, TypeError) as e:
            raise self._damaged(self.oof_csv, e, fix) from None
        return OOF(df["Image"].tolist(), probs, y, folds)

    def splits(self):
        """``splits.csv`` as a DataFrame (Image str, fold int); None when the run has none."""
        if not self.splits_csv.is_file():
            return None
        fix = "delete it to make new folds, or restore it from the run"
        df = self._read_csv(self.splits_csv, what="fold assignment CSV", fix=fix, columns=("Image", "fold"),
                            dtype={"Image": str})
        if not np.issubdtype(df["fold"].dtype, np.integer):
            raise RunFolderError(str(self.splits_csv), expected="integer fold numbers", got=str(df["fold"].dtype),
                                 fix=fix)
        return df

    def metrics(self):
        """``metrics.csv`` (per-epoch metrics of every fold); None when missing."""
        if not self.metrics_csv.is_file():
            return None
        return self._read_csv(self.metrics_csv, what="training metrics CSV",
                              fix=f"rebuild it with `protloc train --out {self.root} --merge`")

    # one fold's results (folds/fold{k}/) ---------------------------------------------------
    def fold_oof_csv(self, fold: int) -> Path:
        return self.fold_dir(fold) / "oof.csv"

    def fold_metrics_csv(self, fold: int) -> Path:
        return self.fold_dir(fold) / "metrics.csv"

    def fold_summary_json(self, fold: int) -> Path:
        return self.fold_dir(fold) / "summary.json"

    def fold_finished(self, fold: int) -> bool:
        """The fold has its summary and out-of-fold probabilities (ready to merge)."""
        return self.fold_summary_json(fold).is_file() and self.fold_oof_csv(fold).is_file()

    def fold_oof(self, fold: int):
        """One fold's out-of-fold probabilities as a DataFrame (Image, fold, Label, classes)."""
        fix = f"re-train fold {fold} (`protloc train --out {self.root} --fold {fold} --overwrite`)"
        return self._read_csv(self.fold_oof_csv(fold), what="out-of-fold probability CSV", fix=fix,
                              columns=("Image", "fold", "Label"), dtype={"Image": str, "Label": str})

    def fold_metrics(self, fold: int):
        """One fold's per-epoch metrics (DataFrame); None when missing."""
        path = self.fold_metrics_csv(fold)
        if not path.is_file():
            return None
        return self._read_csv(path, what="training metrics CSV", fix=f"delete it and re-train fold {fold}")

    def fold_summary(self, fold: int) -> dict:
        """One fold's summary (``folds/fold{k}/summary.json``)."""
        fix = f"re-train fold {fold} (`protloc train --out {self.root} --fold {fold} --overwrite`)"
        return self._read_json(self.fold_summary_json(fold), what="fold summary", fix=fix, kind=dict)

    # writers -----------------------------------------------------------------------------
    def save_setup(self, *, config, preprocessing: Preprocessing, model_spec, data_source: DataSource) -> None:
        """Write what training starts from: config.yaml, preprocessing.json (+ schema.json),
        model.json and data.json (atomic)."""
        from protloc.core.atomic import write_json

        config.save(self.config_yaml)
        write_json(self.schema_json, preprocessing.schema.to_dict())
        preprocessing.save(self.preprocessing_json)
        write_json(self.model_json, model_spec.to_dict())
        write_json(self.data_json, data_source.to_dict())

    def save_thresholds(self, optimizer, **extra) -> Path:
        """Write a fitted ThresholdOptimizer as thresholds.json (``extra`` keys added)."""
        from protloc.core.atomic import write_json

        return write_json(self.thresholds_json, {**optimizer.to_dict(), **extra})
