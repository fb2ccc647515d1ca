"""protloc: multi-label protein subcellular localization from fluorescence microscopy.

The public Python API is small: :func:`load_run` rebuilds a trained predictor from a run
folder; everything else is reachable from the ``protloc`` command.
"""

__version__ = "0.1.0"


def load_run(path, **kwargs):
    """Load a trained run folder and return a :class:`protloc.inference.predictor.Predictor`.

    Examples
    --------
    >>> import protloc  # doctest: +SKIP
    >>> pred = protloc.load_run("runs/demo")  # doctest: +SKIP
    >>> out = pred.predict(["cell.png"])  # doctest: +SKIP
    """
    from protloc.inference.predictor import Predictor

    return Predictor.from_run(path, **kwargs)


__all__ = ["load_run", "__version__"]
