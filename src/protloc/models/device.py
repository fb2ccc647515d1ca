"""Which torch device a command runs on: ``--device`` checked before any model is loaded."""

from __future__ import annotations

import re

from protloc.core.errors import InputError

__all__ = ["resolve_device"]

_DEVICE = re.compile(r"(cpu|cuda|mps)(?::(\d{1,3}))?")


def resolve_device(spec=None) -> str:
    """The device to run on: ``None``/``'auto'`` -> ``'cuda'`` when a GPU is visible, else
    ``'cpu'``; ``'cpu'``, ``'cuda'``, ``'cuda:N'`` and ``'mps'`` are checked against this
    machine (``--device cuda`` without a GPU, or ``cuda:3`` with two GPUs, is an InputError).

    Examples
    --------
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("bogus")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --device: expected cpu, cuda, cuda:N or mps, got 'bogus'. Fix: e.g. --device cpu.
    """
    if spec is None or str(spec).strip() in ("", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(spec).strip()
    m = _DEVICE.fullmatch(text)
    if m is None or (m.group(1) == "cpu" and m.group(2) not in (None, "0")):
        raise InputError("--device", expected="cpu, cuda, cuda:N or mps", got=repr(text), fix="e.g. --device cpu")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":  # no torch import: the ONNX engine runs without torch
        return text
    import torch

    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError("--device", expected="cpu (no CUDA GPU is visible on this machine)", got=repr(text),
                             fix="use --device cpu, or check the GPU driver and CUDA_VISIBLE_DEVICES")
        if index is not None and int(index) >= n:
            raise InputError("--device", expected=f"cuda:0 to cuda:{n - 1} ({n} GPU{'s' if n > 1 else ''} visible)",
                             got=repr(text), fix="pick a visible GPU")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device", expected="cpu (no Apple MPS device here)", got=repr(text), fix="use --device cpu")
    return text
