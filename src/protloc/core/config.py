"""Training configuration: one dataclass, named presets, YAML in and out.

Resolution order (later wins): preset (``--preset`` or the file's ``preset:``) -> config file
(``--config cfg.yaml``) -> command-line flags. The fully resolved config is written to
``RUN/config.yaml`` so a run can be repeated exactly with ``--config RUN/config.yaml``.

Presets
-------
``default``  the recipe chosen on the selection image styles (docs/training.md): EfficientNet-Lite0
             with offline ImageNet weights at the native 128 px, fully fine-tuned, BCE + 0.5
             soft-F1, AdamW + warmup-cosine, D4 + rotation + crop + intensity jitter; with
             ``--max-minutes`` the epochs and the schedule are planned to fill the budget.
``seed``     the reference notebook's recipe for comparison: frozen ImageNet backbone +
             Dense(512, relu) + Dense(10, sigmoid), soft-F1 loss, Adam 1e-4, flips/rotations,
             threshold 0.5. The notebook used InceptionResNetV2, whose weights are not available
             offline; this preset uses the offline EfficientNet-Lite0 weights instead.
``fast``     a quick smoke/demo recipe (small images, few epochs).
``gpu``      what a GPU allows (used instead of ``default`` on CUDA): EfficientNet-Lite2 at 256 px,
             fully fine-tuned, 5 folds, EMA; 4 channels when the HPA yellow files exist. Unmeasured.

Options
-------
Every option is written once, as a field below: its ``metadata`` holds the help text, the
allowed ``choices``, the numeric ``bounds`` and the help ``group``. ``protloc train`` builds
its flags from it (``--batch-size`` for ``batch_size``, ``--x/--no-x`` for booleans) and
:meth:`TrainConfig.validate` checks choices and bounds from it. Checks that need the training
engine (the loss and augmentation specs, the timm model name) live in
``protloc.training.check_recipe``, so this module imports nothing heavier than PyYAML.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import Field, asdict, dataclass, field, fields, replace
from pathlib import Path

from protloc.core.errors import InputError

__all__ = ["TrainConfig", "PRESETS", "flag_name", "field_type", "check_field", "parse_field"]

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
    # what a GPU allows (``protloc train`` uses it instead of ``default`` when CUDA is the accelerator
    # and no --preset is given; 4 channels when the HPA yellow files are there). Unmeasured: no GPU
    # was available when it was written (benchmarks/gpu_check.sh is where it would be measured).
    "gpu": dict(note="GPU recipe (unmeasured: chosen from the CPU measurements and the HPA 2018 top teams' "
                     "practice; see docs/training.md)",
                model="tf_efficientnet_lite2", size=256, freeze_blocks=0, folds=5, batch_size=64, lr=2e-3,
                backbone_lr_mult=0.5, ema=0.999, workers=4),
}

#: the preset ``protloc train`` starts from when no --preset (or config file preset) is given
DEFAULT_PRESET, GPU_PRESET = "default", "gpu"


#: Lightning accelerators and precisions ``protloc train`` accepts (the strategy names are checked
#: against Lightning's registry by ``protloc.training.check_recipe``)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
_DEVICES = re.compile(r"auto|-1|[1-9]\d{0,3}|\d{1,4}(,\s*\d{1,4})*,?")


def _option(group: str):
    """A field factory for one help group: ``opt(default, help, choices=, ge=, gt=, le=, lt=)``."""

    def opt(default, help: str, *, choices=None, expected: str | None = None, fix: str | None = None,
            **bounds) -> Field:
        meta = {"help": help, "group": group}
        if choices is not None:
            meta["choices"] = tuple(choices)
        if bounds:
            assert set(bounds) <= {"ge", "gt", "le", "lt"}, bounds
            meta["bounds"] = bounds
        if expected is not None:
            meta["expected"], meta["fix"] = expected, fix
        return field(default=default, metadata=meta)

    return opt


_recipe, _model, _optim = _option("recipe"), _option("model"), _option("optimisation")
_eval, _cv, _engine = _option("evaluation"), _option("cross-validation"), _option("hardware / engine")
_run = _option("run")
_semi = _option("semi-supervised")


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``protloc train`` (one field per ``--flag``; see the module docstring).

    Examples
    --------
    >>> c = TrainConfig.preset("seed")
    >>> c.loss, c.freeze_epochs, c.hidden
    ('softf1', -1, 512)
    >>> c.override(lr=3e-4).lr
    0.0003
    """

    preset: str = _recipe("default", "recipe the other options start from: default (measured best), seed "
                          "(reference notebook), fast (smoke test / demo)", choices=PRESETS)
    note: str = _recipe("", "free text kept in config.yaml (what this run is for)")
    # model
    model: str = _model("tf_efficientnet_lite0", "any timm model name (tf_efficientnet_lite0 has offline "
                        "ImageNet weights)")
    pretrained: str = _model("auto", "none | auto | offline | hub | PATH to a weights file")
    pool: str = _model("avg", "global pooling of the backbone features", choices=("avg", "max", "avgmax", "catavgmax"))
    dropout: float = _model(0.2, "head dropout", ge=0, lt=1)
    hidden: int = _model(0, "hidden units of the head (0 = linear head)", ge=0)
    drop_path: float = _model(0.0, "stochastic depth rate of the backbone (timm drop_path_rate)", ge=0, lt=1)
    size: int = _model(0, "image side in pixels the model sees (0 = auto: 128, or 160 when the training images' "
                       "nuclei are small at 128 px, i.e. low magnification: more pixels per structure)", ge=0, le=4096)
    intensity: str = _model("auto", "how raw intensities become 8 bit (recorded in preprocessing.json, applied to "
                            "every image the run reads): scale (8-bit as stored, 16-bit divided by its bit range, "
                            "12-bit detected), percentile (per image and channel, 0.1-99.9 percent), auto (decided "
                            "from the training images: scale when they are 8-bit, else percentile)",
                            choices=("auto", "scale", "percentile"))
    z: str = _model("max", "projection of Z stacks: max, mean or middle plane", choices=("max", "mean", "middle"))
    pixel_size: float = _model(0.0, "physical pixel size of the training images in micrometres (0: from the files' "
                               "metadata, else unknown and nothing is rescaled)", ge=0, le=1000)
    # optimisation
    epochs: int = _optim(0, "epochs per fold (0 = auto: as many as --max-minutes allows, planned from the "
                         "measured step time; 15 without a budget); with a budget, the most epochs", ge=0)
    batch_size: int = _optim(32, "images per batch and process", ge=1)
    lr: float = _optim(2e-3, "peak learning rate of the head (backbone: lr * --backbone-lr-mult)", gt=0)
    backbone_lr_mult: float = _optim(0.5, "backbone learning-rate factor", ge=0)
    weight_decay: float = _optim(1e-4, "weight decay (not on biases and norm weights)", ge=0)
    optimizer: str = _optim("adamw", "optimizer (sgd: momentum 0.9, Nesterov)", choices=("adamw", "adam", "sgd"))
    schedule: str = _optim("cosine", "learning-rate schedule: cosine = linear warmup then cosine to 1%",
                           choices=("cosine", "onecycle", "constant"))
    warmup_epochs: float = _optim(1.0, "linear warmup length (cosine schedule)", ge=0)
    freeze_epochs: int = _optim(0, "train the head only for N epochs (-1: backbone frozen throughout)", ge=-1)
    freeze_blocks: int = _optim(0, "keep the stem + first N backbone stages frozen throughout (0 = none; "
                                "3 is ~2.5x faster on CPU but loses the small structures)", ge=0)
    accumulate: int = _optim(1, "gradient accumulation steps", ge=1)
    ema: float = _optim(0.0, "EMA decay of the weights (0 = off), e.g. 0.998", ge=0, lt=1)
    loss: str = _optim("bce+0.5*softf1", "bce | focal | asl | softf1 or a weighted sum like bce+0.5*softf1")
    pos_weight: str = _optim("none", "per-class positive weight of BCE/focal (auto: neg/pos, clipped to [1, 10])",
                             choices=("none", "auto"))
    focal_gamma: float = _optim(2.0, "focusing exponent of the focal loss (0 = BCE)", ge=0)
    sampler: str = _optim("random", "batch sampling (balanced: class-balanced; shard-block: reads the cache "
                          "store a few shards at a time, for data larger than RAM or on shared file systems)",
                          choices=("random", "balanced", "shard-block"))
    augment: str = _optim("d4,jitter", "comma list of d4, flips, rotate, crop, jitter, or none")
    mix: str = _optim("none", "multi-label mixing augmentation: mixup (images and labels mixed) or cutmix (a box "
                      "pasted in, labels joined)", choices=("none", "mixup", "cutmix"))
    mix_alpha: float = _optim(0.4, "Beta(alpha, alpha) of the mixing weight", gt=0)
    mix_prob: float = _optim(0.5, "fraction of batches mixed", ge=0, le=1)
    # semi-supervised
    unlabeled: str = _semi("", "folder of unlabeled images (e.g. the test images) for pseudo-labelling: a teacher "
                           "trains, labels them, a student trains on both (same format and channels as --data)")
    teacher_share: float = _semi(0.5, "share of the time budget (or of the epochs) for the teacher phase", gt=0, lt=1)
    pseudo_targets: str = _semi("sharpened", "pseudo-label targets: sharpened (confident probabilities -> 0/1, the "
                                "rest soft), soft, hard", choices=("sharpened", "soft", "hard"))
    # evaluation / selection
    monitor: str = _eval("val_macro_f1", "checkpoint/early-stop metric (val_macro_f1 at --threshold, "
                         "val_macro_f1_best at each class's best threshold)",
                         choices=("val_macro_f1", "val_macro_f1_best", "val_mAP", "val_micro_f1", "val_loss"))
    patience: int = _eval(0, "early stopping patience in epochs (0 = off)", ge=0)
    threshold: float = _eval(0.5, "threshold of the monitored macro F1", ge=0, le=1)
    oof_tta: str = _eval("d4", "test-time augmentation of the out-of-fold probabilities in oof.csv, which "
                         "`protloc thresholds` fits on: d4 matches `predict --tta d4` (8 views of the validation "
                         "images once after training, counted in --max-minutes)", choices=("none", "flip", "d4"))
    # cross-validation
    folds: int = _cv(1, "K-fold cross-validation (1 = one holdout of --val-fraction, stored as fold 0)", ge=1,
                     expected="1 (holdout) or K >= 2", fix="e.g. --folds 5")
    fold: int | None = _cv(None, "train only fold k of --folds K (merge later with --merge)")
    val_fraction: float = _cv(0.2, "holdout fraction when --folds 1", gt=0, lt=1,
                              expected="a fraction between 0 and 1", fix="e.g. --val-fraction 0.2")
    near_dup: bool = _cv(True, "keep near-duplicate images in one fold (protloc.data.split)")
    seed: int = _cv(42, "random seed (folds, shuffling, augmentation)", ge=0, le=2**32 - 1)
    # hardware / engine
    accelerator: str = _engine("auto", "Lightning accelerator (gpu = cuda)", choices=ACCELERATORS)
    devices: str = _engine("1", "number of devices/processes (1, 2, auto, -1 = all) or GPU indices (0,1)")
    strategy: str = _engine("auto", "auto | ddp | ddp_spawn | fsdp ... (Lightning strategies)")
    num_nodes: int = _engine(1, "machines for multi-node DDP", ge=1)
    precision: str = _engine("auto", "auto = bf16-mixed on CUDA, 32-true on CPU", choices=PRECISIONS)
    compile: bool = _engine(False, "torch.compile the model")
    channels_last: bool = _engine(True, "channels-last memory layout (CPU and CUDA; faster on both)")
    threads: int = _engine(0, "torch CPU threads per process (0 = free cores: cores minus load average, / processes)", ge=0)
    workers: int = _engine(0, "decode workers and DataLoader workers (memmapped uint8 data needs none)", ge=0)
    max_minutes: float = _engine(0.0, "time budget of the whole command: the first steps are timed, the epochs "
                                 "that fit are planned and the schedule ends there (re-planned as the machine "
                                 "slows down or speeds up); the best checkpoint is kept (0 = none)", ge=0)
    skip_bad: bool = _run(False, "leave unreadable images out of training (reported) instead of refusing")
    logger: str = _run("none", "experiment tracker fed with each epoch's metrics.csv row: csv or tensorboard "
                       "(RUN/logs/), mlflow (a local store in RUN/mlflow/; pip install 'protloc[mlflow]'); the run "
                       "folder stays the record", choices=("none", "csv", "tensorboard", "mlflow"))

    # ---------------------------------------------------------------------------------------
    # ``TrainConfig.preset(name)`` (a classmethod, attached below the class) builds a preset;
    # ``cfg.preset`` on an instance is the field.

    def override(self, **kw) -> "TrainConfig":
        """A copy with ``kw`` applied (``None`` values ignored); unknown keys are an error."""
        names = {f.name for f in fields(self)}
        bad = [k for k in kw if k not in names]
        if bad:
            raise InputError("training config", expected=f"keys from {sorted(names)}",
                             got=", ".join(bad), fix="remove or rename those keys")
        types = _field_types()
        return replace(self, **{k: _coerce(k, v, types[k]) for k, v in kw.items() if v is not None})

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
        from protloc.core.readers import read_yaml

        return read_yaml(path, what="config file", flag="--config", fix="write key: value lines (see a run's "
                         "config.yaml)", allow_empty=True)

    @classmethod
    def resolve(cls, *, preset: str | None = None, file: str | Path | None = None, default_preset: str = "default",
                **flags) -> "TrainConfig":
        """Preset -> config file -> flags (``None`` flags mean 'not given'); ``default_preset`` when neither
        names one (the CLI passes ``gpu`` on CUDA)."""
        data = cls.load_dict(file) if file else {}
        cfg = cls.preset(preset or data.get("preset") or default_preset)
        data = {k: v for k, v in data.items() if k != "preset"}
        return cfg.override(**data).override(**flags).validate()

    def validate(self) -> "TrainConfig":
        """Raise InputError for a value outside its field's choices or bounds, or a fold out of range.

        Examples
        --------
        >>> TrainConfig(schedule="cosin").validate()
        Traceback (most recent call last):
        ...
        protloc.core.errors.InputError: --schedule: expected cosine, onecycle or constant, got 'cosin'. Fix: pick one of those.
        >>> TrainConfig(lr=0).validate()
        Traceback (most recent call last):
        ...
        protloc.core.errors.InputError: --lr: expected a number > 0, got 0. Fix: pass a value > 0.
        """
        types = _field_types()
        for f in fields(self):
            _check_value(f, getattr(self, f.name), types[f.name])
        if not _DEVICES.fullmatch(str(self.devices).strip()):
            raise InputError("--devices", expected="a count (1, 2), auto, -1 (all) or GPU indices like 0,1",
                             got=repr(self.devices), fix="e.g. --devices 1")
        if 0 < self.size < 8:
            raise InputError("--size", expected="0 (auto) or 8 to 4096 pixels", got=str(self.size),
                             fix="e.g. --size 128, or --size 0 to let the training images decide")
        n_val_folds = 1 if self.folds == 1 else self.folds
        if self.fold is not None and not 0 <= self.fold < n_val_folds:
            raise InputError("--fold", expected=f"0 to {n_val_folds - 1}", got=str(self.fold),
                             fix=f"pick a fold of --folds {self.folds}")
        return self


def _preset(cls, name: str) -> TrainConfig:
    """The config of the named preset (``TrainConfig.preset("seed")``)."""
    if name not in PRESETS:
        raise InputError("--preset", expected=" | ".join(PRESETS), got=repr(name),
                         fix="pick one of the presets")
    return replace(cls(), preset=name, **PRESETS[name])


# Attached after @dataclass has read the field's default "default": a classmethod defined in the
# class body would replace that default (``TrainConfig().preset`` was a bound method).
TrainConfig.preset = classmethod(_preset)


def flag_name(name: str) -> str:
    """The command-line flag of a config field.

    Examples
    --------
    >>> flag_name("batch_size")
    '--batch-size'
    """
    return "--" + name.replace("_", "-")


def field_type(f: Field) -> type:
    """The value type of a config field (``int | None`` -> ``int``)."""
    return _field_types()[f.name]


def _field_types() -> dict[str, type]:
    global _TYPES
    if _TYPES is None:
        hints = typing.get_type_hints(TrainConfig)
        _TYPES = {k: next(a for a in typing.get_args(t) if a is not type(None)) if typing.get_args(t) else t
                  for k, t in hints.items()}
    return _TYPES


_TYPES: dict | None = None
_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b,
             "lt": lambda v, b: v < b}


def _bounds_text(b: dict) -> str:
    """``{'ge': 0, 'lt': 1}`` -> ``'in [0, 1)'``; one bound -> ``'>= 0'``."""
    lo = [(k, v) for k, v in b.items() if k in ("ge", "gt")]
    hi = [(k, v) for k, v in b.items() if k in ("le", "lt")]
    if lo and hi:
        (lk, lv), (hk, hv) = lo[0], hi[0]
        return f"in {'[' if lk == 'ge' else '('}{lv}, {hv}{']' if hk == 'le' else ')'}"
    k, v = (lo or hi)[0]
    return f"{_BOUND_TEXT[k]} {v}"


def _check_value(f: Field, v, typ: type) -> None:
    meta, flag = f.metadata, flag_name(f.name)
    if v is None and f.default is None:
        return
    numeric = typ in (int, float)
    if numeric and (isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not isinstance(v, int))):
        raise InputError(flag, expected=f"a{'n integer' if typ is int else ' number'}", got=repr(v),
                         fix=f"give {f.name} a {typ.__name__} value")
    if typ is float and not math.isfinite(v):
        raise InputError(flag, expected="a finite number", got=repr(v), fix=f"give {f.name} a finite value")
    choices = meta.get("choices")
    if choices and v not in choices:
        choices = list(choices)
        raise InputError(flag, expected=", ".join(choices[:-1]) + f" or {choices[-1]}", got=repr(v),
                         fix="pick one of those")
    b = meta.get("bounds")
    if b and not all(_BOUND_OK[k](v, limit) for k, limit in b.items()):
        cond = _bounds_text(b)
        if "expected" in meta:
            expected, fix = meta["expected"], meta["fix"]
        elif typ is int:
            expected = "a positive integer" if b == {"ge": 1} else f"an integer {cond}"
            fix = f"pass a value {cond}"
        else:
            expected, fix = f"a number {cond}", f"pass a value {cond}"
        raise InputError(flag, expected=expected, got=str(v), fix=fix)


def check_field(name: str, value) -> None:
    """Check one option value against its field's type, choices and bounds (what ``validate``
    does per field); ``protloc train`` runs it on each flag as it is parsed.

    Examples
    --------
    >>> check_field("lr", -1.0)
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --lr: expected a number > 0, got -1.0. Fix: pass a value > 0.
    """
    f = next(f for f in fields(TrainConfig) if f.name == name)
    _check_value(f, value, _field_types()[name])


def parse_field(name: str, text: str):
    """A command-line string as the value of one option, checked (:func:`check_field`).

    Examples
    --------
    >>> parse_field("epochs", "3"), parse_field("accelerator", "cpu")
    (3, 'cpu')
    >>> parse_field("dropout", "x")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --dropout: expected a number, got 'x'. Fix: e.g. --dropout 0.2.
    """
    typ = _field_types()[name]
    default = getattr(TrainConfig(), name)
    if typ in (int, float):
        try:
            if not str(text).isascii():  # int('٣') is 3: only ASCII digits are numbers here
                raise ValueError(text)
            value = typ(text)
        except ValueError:
            raise InputError(flag_name(name), expected="an integer" if typ is int else "a number", got=repr(text),
                             fix=f"e.g. {flag_name(name)} {default if default is not None else 0}") from None
    else:
        value = typ(text)
    check_field(name, value)
    return value


def _coerce(key, v, typ):
    try:
        if typ is bool and isinstance(v, str):
            return v.lower() in ("1", "true", "yes", "on")
        if typ is str:
            return str(v)
        if isinstance(v, str) and not v.isascii():  # int('٣') is 3: only ASCII digits are numbers here
            raise ValueError(v)
        return typ(v)
    except (TypeError, ValueError):
        raise InputError(f"config {key}", expected=typ.__name__, got=repr(v),
                         fix=f"give {key} a {typ.__name__} value") from None
