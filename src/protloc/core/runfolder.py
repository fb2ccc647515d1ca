"""The run folder: the one artifact from which predict, evaluate, explain, report, CLI and web
rebuild everything.

Layout::

    RUN/
      config.yaml            fully resolved training config
      schema.json            label schema (ordered class names)
      preprocessing.json     format, channels, size, mean/std, schema
      model.json             ModelSpec (timm backbone, in_chans, head)
      splits.csv             Image,fold (validation fold of each training image)
      checkpoints/fold{k}/   Lightning checkpoints: best.ckpt, last.ckpt (for --resume)
      models/fold{k}.pt      best weights of fold k (what predict loads; ensembled)
      folds/fold{k}/         per-fold oof.csv, metrics.csv, summary.json (merged into the files
                             below; folds trained on other machines are merged with --merge)
      metrics.csv            per-epoch metrics of every fold (fold column)
      oof.csv                out-of-fold probabilities: Image, fold, Label (truth), <class names...>
      summary.json           final validation metrics per fold and overall OOF
      thresholds.json        per-class thresholds + diagnostics (protloc thresholds)
      evaluation.json        last `protloc evaluate` result (optional)
      model.onnx(.json)      ONNX export + its preprocessing (protloc export, optional)
      train.log              log
      report.html            evaluation report (protloc report)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from protloc.core.errors import RunFolderError
from protloc.core.preprocessing import Preprocessing


@dataclass(frozen=True)
class RunFolder:
    """Paths and loaders of one run folder.

    Examples
    --------
    >>> RunFolder("runs/r1").oof_csv.name
    'oof.csv'
    """

    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    # paths -------------------------------------------------------------------------------
    config_yaml = property(lambda self: self.root / "config.yaml")
    schema_json = property(lambda self: self.root / "schema.json")
    preprocessing_json = property(lambda self: self.root / "preprocessing.json")
    model_json = property(lambda self: self.root / "model.json")
    splits_csv = property(lambda self: self.root / "splits.csv")
    metrics_csv = property(lambda self: self.root / "metrics.csv")
    oof_csv = property(lambda self: self.root / "oof.csv")
    summary_json = property(lambda self: self.root / "summary.json")
    thresholds_json = property(lambda self: self.root / "thresholds.json")
    log = property(lambda self: self.root / "train.log")
    report_html = property(lambda self: self.root / "report.html")
    models_dir = property(lambda self: self.root / "models")

    def ckpt_dir(self, fold: int) -> Path:
        return self.root / "checkpoints" / f"fold{fold}"

    def model_path(self, fold: int) -> Path:
        return self.models_dir / f"fold{fold}.pt"

    def model_paths(self) -> list[Path]:
        """Fold model files, sorted by fold number."""
        paths = sorted(self.models_dir.glob("fold*.pt"), key=lambda p: int(p.stem[4:]) if p.stem[4:].isdigit() else 0)
        return paths

    # checks and loaders -------------------------------------------------------------------
    def check(self, *, need_models: bool = True) -> "RunFolder":
        """Raise RunFolderError unless this looks like a usable run folder."""
        if not self.root.is_dir():
            raise RunFolderError(f"{self.root}: run folder not found. Fix: pass the --out folder of "
                                 "`protloc train`")
        if not self.preprocessing_json.is_file():
            raise RunFolderError(f"{self.root}: not a run folder (no preprocessing.json). Fix: pass the "
                                 "--out folder of `protloc train`")
        if need_models and not self.model_paths():
            raise RunFolderError(f"{self.root}: no trained model in models/ (training unfinished?). Fix: "
                                 "finish training, or `protloc train ... --resume`")
        return self

    def preprocessing(self) -> Preprocessing:
        return Preprocessing.load(self.preprocessing_json)

    def config(self) -> dict:
        import yaml

        if not self.config_yaml.is_file():
            return {}
        return yaml.safe_load(self.config_yaml.read_text()) or {}

    def summary(self) -> dict:
        return json.loads(self.summary_json.read_text()) if self.summary_json.is_file() else {}

    def thresholds(self) -> dict | None:
        return json.loads(self.thresholds_json.read_text()) if self.thresholds_json.is_file() else None

    def oof(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Out-of-fold ``(ids, probs (N,C), y (N,C) multi-hot, folds (N,))`` in class order."""
        if not self.oof_csv.is_file():
            raise RunFolderError(f"{self.oof_csv}: no out-of-fold probabilities. Fix: train with "
                                 "validation (--folds K or the default holdout)")
        df = pd.read_csv(self.oof_csv, dtype={"Image": str})
        classes = list(self.preprocessing().classes)
        missing = [c for c in classes if c not in df.columns]
        if missing:
            raise RunFolderError(f"{self.oof_csv}: missing class columns {missing}. Fix: re-run training")
        pre = self.preprocessing()
        y = pre.schema.to_multihot([pre.schema.parse(t) for t in df["Label"].fillna("").astype(str)])
        return df["Image"].tolist(), df[classes].to_numpy(np.float32), y, df["fold"].to_numpy()
