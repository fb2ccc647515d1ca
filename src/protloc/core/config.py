"""Training configuration: one dataclass, named presets, YAML in and out.

Resolution order (later wins): preset (``--preset`` or the file's ``preset:``) -> config file
(``--config cfg.yaml``) -> command-line flags. The fully resolved config is written to
``RUN/config.yaml`` so a run can be repeated exactly with ``--config RUN/config.yaml``.

Presets
-------
``default``  the recipe chosen by measurement (docs/training.md): EfficientNet-Lite0 with offline
             ImageNet weights at 96 px, fine-tuned except the stem and first 3 stages (CPU speed),
             BCE + 0.5 soft-F1, AdamW + warmup-cosine for 12 epochs, D4 + rotation + crop +
             intensity jitter; trains 3,000 images in ~13 min on 2 shared CPU cores.
``seed``     the reference notebook's recipe for comparison: frozen ImageNet backbone +
             Dense(512, relu) + Dense(10, sigmoid), soft-F1 loss, Adam 1e-4, flips/rotations,
             threshold 0.5. The notebook used InceptionResNetV2, whose weights are not available
             offline; this preset uses the offline EfficientNet-Lite0 weights instead.
``fast``     a quick smoke/demo recipe (small images, few epochs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from protloc.core.errors import InputError, fmt_problem


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``protloc train``.

    Examples
    --------
    >>> c = TrainConfig.preset("seed")
    >>> c.loss, c.freeze_epochs, c.hidden
    ('softf1', -1, 512)
    >>> c.override(lr=3e-4).lr
    0.0003
    """

    preset: str = "default"
    note: str = ""
    # model
    model: str = "tf_efficientnet_lite0"
    pretrained: str = "auto"
    pool: str = "avg"
    dropout: float = 0.2
    hidden: int = 0
    drop_path: float = 0.0
    size: int = 96
    # optimisation
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    backbone_lr_mult: float = 0.5
    weight_decay: float = 1e-4
    optimizer: str = "adamw"        # adamw | adam | sgd
    schedule: str = "cosine"        # cosine (warmup + cosine) | onecycle | constant
    warmup_epochs: float = 1.0
    freeze_epochs: int = 0          # head only for N epochs; -1 = backbone frozen throughout
    freeze_blocks: int = 3          # stem + first N backbone stages frozen throughout (CPU speed)
    accumulate: int = 1
    ema: float = 0.0                # EMA decay (0 = off), e.g. 0.998
    loss: str = "bce+0.5*softf1"    # bce | focal | asl | softf1 | weighted sums (default: measured best)
    pos_weight: str = "none"        # none | auto (neg/pos per class, clipped to [1, 10])
    focal_gamma: float = 2.0
    sampler: str = "random"         # random | balanced | shard-block (store order, large data)
    augment: str = "d4,rotate,crop,jitter"   # comma list or none
    # evaluation / selection
    monitor: str = "val_macro_f1"   # val_macro_f1 | val_macro_f1_best | val_mAP | val_loss
    patience: int = 0               # early stopping patience in epochs (0 = off)
    threshold: float = 0.5
    # cross-validation
    folds: int = 1                  # 1 = holdout (val_fraction) stored as fold 0
    fold: int | None = None         # train only this fold
    val_fraction: float = 0.2
    near_dup: bool = True           # keep near-duplicate images in one fold (protloc.data.split)
    seed: int = 42
    # hardware / engine
    accelerator: str = "auto"
    devices: str = "1"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"         # auto = bf16-mixed on CUDA, 32-true on CPU
    compile: bool = False
    channels_last: bool = True
    threads: int = 0                # torch CPU threads (0 = cores / processes)
    workers: int = 0                # DataLoader workers (memmapped uint8 data needs none)
    max_minutes: float = 0.0        # 0 = no time budget
    skip_bad: bool = False

    # ---------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "TrainConfig":
        if name not in PRESETS:
            raise InputError(fmt_problem("--preset", expected=" | ".join(PRESETS), got=repr(name),
                                         fix="pick one of the presets"))
        return replace(cls(), preset=name, **PRESETS[name])

    def override(self, **kw) -> "TrainConfig":
        """A copy with ``kw`` applied (``None`` values ignored); unknown keys are an error."""
        names = {f.name for f in fields(self)}
        bad = [k for k in kw if k not in names]
        if bad:
            raise InputError(fmt_problem("training config", expected=f"keys from {sorted(names)}",
                                         got=", ".join(bad), fix="remove or rename those keys"))
        out = {}
        for k, v in kw.items():
            if v is None:
                continue
            out[k] = _coerce(k, v, type(getattr(self, k)) if getattr(self, k) is not None else int)
        return replace(self, **out)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        from protloc.core.atomic import write_text

        return write_text(path, self.to_yaml())

    @classmethod
    def load_dict(cls, path: str | Path) -> dict:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: config file not found. Fix: check the --config path")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({e}). Fix: correct the file") from None
        if not isinstance(data, dict):
            raise InputError(fmt_problem(str(path), expected="a YAML mapping of config keys",
                                         got=type(data).__name__, fix="write key: value lines"))
        return data

    @classmethod
    def resolve(cls, *, preset: str | None = None, file: str | Path | None = None, **flags) -> "TrainConfig":
        """Preset -> config file -> flags (``None`` flags mean 'not given')."""
        data = cls.load_dict(file) if file else {}
        cfg = cls.preset(preset or data.get("preset") or "default")
        data = {k: v for k, v in data.items() if k != "preset"}
        return cfg.override(**data).override(**flags).validate()

    def validate(self) -> "TrainConfig":
        """Raise InputError for option values outside their choices.

        Examples
        --------
        >>> TrainConfig(schedule="cosin").validate()
        Traceback (most recent call last):
        ...
        protloc.core.errors.InputError: --schedule: expected cosine, onecycle or constant, got 'cosin'. Fix: pick one of those.
        """
        for key, choices in CHOICES.items():
            v = getattr(self, key)
            if v not in choices:
                raise InputError(fmt_problem(f"--{key.replace('_', '-')}", expected=", ".join(choices[:-1])
                                             + f" or {choices[-1]}", got=repr(v), fix="pick one of those"))
        for key in ("epochs", "batch_size", "size", "accumulate"):
            if getattr(self, key) < 1:
                raise InputError(fmt_problem(f"--{key.replace('_', '-')}", expected="a positive integer",
                                             got=str(getattr(self, key)), fix="pass a value >= 1"))
        from protloc.training.augment import BatchAugment
        from protloc.training.losses import parse_loss_spec

        parse_loss_spec(self.loss)
        BatchAugment(self.augment)
        import timm

        if not timm.is_model(self.model):
            import difflib

            close = ", ".join(difflib.get_close_matches(self.model, timm.list_models(), n=4)) or "see timm.list_models()"
            raise InputError(fmt_problem("--model", expected="a timm model name", got=repr(self.model),
                                         fix=f"pick a timm model (similar: {close})"))
        if not 0 < self.val_fraction < 1:
            raise InputError(fmt_problem("--val-fraction", expected="a fraction between 0 and 1",
                                         got=str(self.val_fraction), fix="e.g. --val-fraction 0.2"))
        return self


CHOICES = {
    "optimizer": ("adamw", "adam", "sgd"),
    "schedule": ("cosine", "onecycle", "constant"),
    "pool": ("avg", "max", "avgmax", "catavgmax"),
    "sampler": ("random", "balanced", "shard-block"),
    "pos_weight": ("none", "auto"),
    "monitor": ("val_macro_f1", "val_macro_f1_best", "val_mAP", "val_micro_f1", "val_loss"),
}


def _coerce(key, v, typ):
    try:
        if typ is bool and isinstance(v, str):
            return v.lower() in ("1", "true", "yes", "on")
        if typ is str:
            return str(v)
        return typ(v)
    except (TypeError, ValueError):
        raise InputError(fmt_problem(f"config {key}", expected=typ.__name__, got=repr(v),
                                     fix=f"give {key} a {typ.__name__} value")) from None


PRESETS: dict[str, dict] = {
    "default": {},
    "seed": dict(
        note="reference notebook recipe; InceptionResNetV2 weights are not available offline, so the "
             "frozen backbone is EfficientNet-Lite0 with offline ImageNet weights",
        model="tf_efficientnet_lite0", pretrained="offline", hidden=512, dropout=0.0, pool="avg",
        loss="softf1", optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="constant",
        warmup_epochs=0.0, freeze_epochs=-1, freeze_blocks=0, augment="d4", epochs=30, threshold=0.5, size=128,
        backbone_lr_mult=1.0),
    "fast": dict(size=64, epochs=3, batch_size=64, augment="d4", warmup_epochs=0.5, freeze_blocks=2),
}
