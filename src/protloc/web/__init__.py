"""``protloc serve``: a small FastAPI web app (page + JSON API) on top of one run folder.

>>> from protloc.web import create_app   # doctest: +SKIP
>>> app = create_app("runs/r1")          # doctest: +SKIP
"""

from __future__ import annotations


def create_app(run_dir, **kwargs):
    """Build the FastAPI app for ``run_dir`` (see :func:`protloc.web.app.create_app`)."""
    from protloc.web.app import create_app as _create

    return _create(run_dir, **kwargs)


__all__ = ["create_app"]
