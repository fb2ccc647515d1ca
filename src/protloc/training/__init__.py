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

    cfg.validate()
    parse_loss_spec(cfg.loss)
    BatchAugment(cfg.augment)
    if not timm.is_model(cfg.model):
        close = ", ".join(difflib.get_close_matches(cfg.model, timm.list_models(), n=4)) or "see timm.list_models()"
        raise InputError("--model", expected="a timm model name", got=repr(cfg.model),
                         fix=f"pick a timm model (similar: {close})")
    return cfg


__all__ = ["check_recipe"]
