"""The training engine: Lightning DataModule + LightningModule + callbacks, losses, augmentation.

:func:`check_recipe` is the full check of a training config; ``protloc train`` calls it before
it touches the run folder.
"""

from __future__ import annotations


def check_recipe(cfg):
    """``cfg.validate()`` plus the checks that need the training engine; returns ``cfg``.

    :meth:`protloc.core.config.TrainConfig.validate` checks every field against its choices and
    bounds without importing the engine; the meaning of ``loss``, ``augment`` and ``model`` is
    known here: the loss spec must parse (:func:`protloc.training.losses.parse_loss_spec`), the
    augmentation ops must exist (:class:`protloc.training.augment.BatchAugment`) and the model
    must be a timm model (close names are suggested).

    Examples
    --------
    >>> from protloc.core.config import TrainConfig
    >>> check_recipe(TrainConfig(loss="mse"))
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --loss: expected terms from bce, focal, asl, softf1 joined by + with optional weights, got 'mse'. Fix: e.g. --loss bce, --loss asl or --loss bce+0.5*softf1.
    """
    import difflib

    import timm

    from protloc.core.errors import InputError
    from protloc.training.augment import BatchAugment
    from protloc.training.losses import parse_loss_spec
    from protloc.training.tracking import check_logger

    cfg.validate()
    parse_loss_spec(cfg.loss)
    BatchAugment(cfg.augment)
    check_logger(cfg.logger)
    if not timm.is_model(cfg.model):
        close = ", ".join(difflib.get_close_matches(cfg.model, timm.list_models(), n=4)) or "see timm.list_models()"
        raise InputError("--model", expected="a timm model name", got=repr(cfg.model),
                         fix=f"pick a timm model (similar: {close})")
    check_hardware(cfg)
    check_pretrained(cfg)
    return cfg


def check_hardware(cfg) -> None:
    """The strategy is one Lightning knows, and Lightning accepts the accelerator, devices,
    strategy, nodes and precision together on this machine (a GPU accelerator without a GPU,
    GPU indices on the CPU, fsdp on the CPU...): a Trainer is built with exactly the hardware
    arguments training will use, and its complaint becomes an InputError."""
    import difflib
    import logging
    import warnings

    import lightning.pytorch as pl
    from lightning.pytorch.strategies import StrategyRegistry

    from protloc.core.errors import InputError
    from protloc.training.train import trainer_hardware

    known = ["auto", *StrategyRegistry.available_strategies()]
    if cfg.strategy not in known:
        close = ", ".join(difflib.get_close_matches(cfg.strategy, known, n=3)) or "auto, ddp, ddp_spawn, fsdp"
        raise InputError("--strategy", expected="a Lightning strategy name", got=repr(cfg.strategy),
                         fix=f"e.g. --strategy auto (similar: {close})")
    hw = trainer_hardware(cfg)
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pl.Trainer(**hw, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False)
    except Exception as e:  # noqa: BLE001 - Lightning raises ValueError, TypeError, MisconfigurationException...
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        given = " ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in
                         ("accelerator", "devices", "strategy", "precision", "num_nodes")
                         if k != "num_nodes" or cfg.num_nodes != 1)
        raise InputError(given, expected="a hardware setup Lightning can run on this machine",
                         got=f"{type(e).__name__}: {why[:300].rstrip('.')}",
                         fix="e.g. --accelerator auto --devices 1 --strategy auto --precision auto") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def check_pretrained(cfg) -> None:
    """``--pretrained PATH``: the file exists and holds weights that fit ``--model`` (loaded once
    here, before any file is written; a text file or another model's weights is an InputError)."""
    from protloc.core.modelspec import ModelSpec
    from protloc.models.network import PRETRAINED_SOURCES, build_model

    if str(cfg.pretrained).strip() in PRETRAINED_SOURCES:
        return
    build_model(ModelSpec(backbone=cfg.model, in_chans=3, num_classes=2), pretrained=cfg.pretrained)


__all__ = ["check_recipe", "check_hardware", "check_pretrained"]
