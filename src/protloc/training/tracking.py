"""Experiment tracking through Lightning loggers (``protloc train --logger csv|tensorboard|mlflow``).

The run folder stays the record (``metrics.csv``, ``summary.json``...). A tracker is a view of
it: after every epoch, rank 0 sends the row it has just written to ``folds/fold{k}/metrics.csv``
(:class:`~protloc.training.callbacks.EpochRecorder`) to the fold's logger, with the epoch as
the step, and the resolved config as hyperparameters. Nothing else is logged (the
LightningModule's own ``self.log`` calls do not reach the logger), so the tracker shows exactly
the numbers of ``metrics.csv``.

Every store is local and offline (no server, no network):

==============  ===============================================================================
``csv``         ``RUN/logs/csv/fold{k}/metrics.csv`` + ``hparams.yaml`` (Lightning's CSVLogger)
``tensorboard`` ``RUN/logs/tensorboard/fold{k}/`` event files (written by tensorboardX; view them
                with ``tensorboard --logdir RUN/logs/tensorboard``, ``pip install tensorboard``)
``mlflow``      ``RUN/mlflow/mlflow.db`` (SQLite) + ``RUN/mlflow/artifacts``, one MLflow run per
                fold named ``RUNNAME-fold{k}`` in the experiment ``protloc``
                (``MLFLOW_EXPERIMENT_NAME``); ``MLFLOW_TRACKING_URI`` points it at a server
                instead. Optional: ``pip install 'protloc[mlflow]'``. MLflow's telemetry is
                switched off unless ``MLFLOW_DISABLE_TELEMETRY`` says otherwise. View with
                ``mlflow ui --backend-store-uri sqlite:///RUN/mlflow/mlflow.db``.
==============  ===============================================================================

A resumed fold appends to the same CSV/TensorBoard folder and opens a new MLflow run.
"""

from __future__ import annotations

import importlib.util
import os

from protloc.core.errors import InputError

__all__ = ["LOGGERS", "check_logger", "make_logger"]

LOGGERS = ("none", "csv", "tensorboard", "mlflow")
#: what each tracker needs importable (any one of the alternatives), and how to get it
_NEEDS = {"tensorboard": ((("tensorboardX",), ("tensorboard",)), "pip install tensorboardX"),
          "mlflow": ((("mlflow", "sqlalchemy", "alembic"),), "pip install 'protloc[mlflow]'")}


def check_logger(kind: str) -> str:
    """Raise InputError when the tracker ``kind`` cannot run here (its package is missing).

    Examples
    --------
    >>> check_logger("csv")
    'csv'
    """
    from protloc.core.errors import check_choice

    check_choice("logger", kind, LOGGERS)
    if kind not in _NEEDS:
        return kind
    options, install = _NEEDS[kind]
    if not any(all(importlib.util.find_spec(m) is not None for m in mods) for mods in options):
        missing = [m for m in options[0] if importlib.util.find_spec(m) is None]
        raise InputError(f"--logger {kind}", expected=f"{', '.join(options[0])} installed",
                         got=f"no {', '.join(missing)}",
                         fix=f"{install}, or choose --logger csv (no extra package)")
    return kind


def make_logger(kind: str, run, fold: int):
    """The Lightning logger of fold ``fold`` of the run folder ``run`` (None for ``none``)."""
    check_logger(kind)
    if kind == "none":
        return None
    from lightning.pytorch import loggers

    if kind == "csv":
        return loggers.CSVLogger(save_dir=str(run.logs_dir), name="csv", version=f"fold{fold}")
    if kind == "tensorboard":
        return loggers.TensorBoardLogger(save_dir=str(run.logs_dir), name="tensorboard", version=f"fold{fold}",
                                         default_hp_metric=False)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    store = run.mlflow_dir.resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store / 'mlflow.db'}"
    if uri.startswith("sqlite:"):
        store.mkdir(parents=True, exist_ok=True)
    return loggers.MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "protloc"),
                                run_name=f"{run.root.resolve().name}-fold{fold}", tracking_uri=uri,
                                artifact_location=(store / "artifacts").as_uri(),
                                tags={"protloc.run_folder": str(run.root.resolve()), "protloc.fold": str(fold)})
