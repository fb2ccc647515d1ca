"""Deterministic multilabel-stratified folds that never split a group or a near duplicate.

Images that must stay together (same ``--group-col`` value, byte-identical or near-duplicate
pictures) are merged into one unit whose label vector is the union of its members' labels;
units are stratified with iterative stratification (``iterstrat``'s
MultilabelStratifiedKFold / MultilabelStratifiedShuffleSplit) and every member inherits its
unit's fold.

Fold convention: ``fold[i] == k`` means image ``i`` is a *validation* image of fold ``k``.
With ``holdout`` the held-out images get fold 0 and all others -1 (train only).
"""

from __future__ import annotations

import numpy as np

from protloc.core.errors import InputError


def unit_ids(n: int, *, groups=None, linked=()) -> np.ndarray:
    """Merge images into units: same group value, or linked by any list in ``linked``.

    Returns an int array (N,) of unit ids numbered 0..U-1 in order of first appearance.

    Examples
    --------
    >>> unit_ids(5, groups=["a", "b", "a", "c", "d"], linked=[[3, 4]]).tolist()
    [0, 1, 0, 2, 2]
    """
    from protloc.data.phash import groups_from_pairs

    pairs = []
    if groups is not None:
        groups = list(groups)
        if len(groups) != n:
            raise InputError("groups", expected=f"{n} values (one per image)",
                             got=str(len(groups)), fix="pass one group per row")
        first: dict = {}
        for i, g in enumerate(groups):
            if g is None or (isinstance(g, float) and np.isnan(g)) or str(g).strip() == "":
                continue  # no group: the image stands alone
            j = first.setdefault(g, i)
            if j != i:
                pairs.append((j, i))
    for grp in linked:
        grp = list(grp)
        pairs += [(grp[0], j) for j in grp[1:]]
    root = np.arange(n)
    for comp in groups_from_pairs(n, pairs):
        root[comp] = comp[0]
    _, units = np.unique(root, return_inverse=True)
    # renumber by first appearance for readability/determinism
    order = {u: k for k, u in enumerate(dict.fromkeys(units.tolist()))}
    return np.array([order[u] for u in units.tolist()], dtype=int)


def stratified_folds(y: np.ndarray, units: np.ndarray, *, n_folds: int = 5, seed: int = 0,
                     holdout: float | None = None) -> np.ndarray:
    """Fold per image from a multi-hot ``y`` (N, C) and unit ids (N,); pure function.

    Examples
    --------
    >>> y = np.eye(4, dtype=np.uint8)[np.arange(20) % 4]
    >>> f = stratified_folds(y, np.arange(20), n_folds=5, seed=0)
    >>> np.bincount(f).tolist()
    [4, 4, 4, 4, 4]
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
    from sklearn.model_selection import KFold, ShuffleSplit

    y = np.asarray(y)
    units = np.asarray(units, dtype=int)
    n_units = int(units.max()) + 1 if len(units) else 0
    uy = np.zeros((n_units, y.shape[1] if y.ndim == 2 and y.shape[1] else 1), dtype=np.uint8)
    if y.ndim == 2 and y.shape[1]:
        np.maximum.at(uy, units, (y > 0).astype(np.uint8))
    else:
        uy[:] = 1
    multilabel = uy.shape[1] > 1  # iterstrat needs >= 2 label columns; else plain shuffled folds
    ufold = np.full(n_units, -1, dtype=int)
    X = np.zeros((n_units, 1))
    if holdout is not None:
        if not 0 < holdout < 1:
            raise InputError("--holdout", expected="a fraction between 0 and 1",
                             got=str(holdout), fix="e.g. --holdout 0.2")
        if n_units < 2:
            raise InputError("holdout split", expected="at least 2 independent images",
                             got=str(n_units), fix="add images")
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=holdout, random_state=seed) \
            if multilabel else ShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
        _, val = next(splitter.split(X, uy))
        ufold[val] = 0
    else:
        if n_folds < 2:  # one fold would leave nothing to train on
            raise InputError("--folds", expected="2 or more folds", got=str(n_folds),
                             fix="use --holdout FRACTION for one validation set (e.g. --holdout 0.2), "
                                 "or --folds 2 or more")
        if n_folds > n_units:
            raise InputError("--folds", expected=f"2 to {n_units} folds (independent image groups)",
                             got=str(n_folds), fix="use fewer folds or --holdout")
        splitter = (MultilabelStratifiedKFold if multilabel else KFold)(n_splits=n_folds, shuffle=True,
                                                                       random_state=seed)
        for k, (_, val) in enumerate(splitter.split(X, uy)):
            ufold[val] = k
    return ufold[units]


def make_folds(table, n_folds: int = 5, *, seed: int = 0, groups=None, near_dup: bool = True,
               holdout: float | None = None, progress: bool = False, threshold: int | None = None,
               workers: int | None = None, linked=None, images=None, rotations: bool = False) -> np.ndarray:
    """Fold per image of a DataTable (see the module docstring for the convention).

    Parameters
    ----------
    table : DataTable
        Labeled (stratified) or unlabeled (plain shuffled folds).
    n_folds : int
        Number of folds (ignored with ``holdout``).
    groups : sequence, optional
        One group value per image (e.g. a plate or cell line); a group stays in one fold.
    near_dup : bool
        Decode and hash the images and keep byte-identical/near-duplicate images together.
    holdout : float, optional
        Fraction held out as one validation set instead of K folds.
    linked : list of lists, optional
        Precomputed groups of indices to keep together (e.g. from
        :func:`protloc.data.validate.near_duplicate_groups`); used instead of hashing.
    images : (N, H, W, C) uint8 array, optional
        Already decoded images of the table (e.g. ``load_cached(table, size=128).images``):
        near duplicates are hashed from them instead of decoding the files again (fast).
    rotations : bool
        Also treat rotated / mirrored copies as near duplicates (slower search).

    Examples
    --------
    >>> folds = make_folds(load_table("train.csv", "train/"), 5, seed=0)  # doctest: +SKIP
    >>> np.bincount(folds)  # doctest: +SKIP
    array([3078, 3078, 3077, 3078, 3078])
    """
    linked = list(linked or [])
    if near_dup and not linked:
        from protloc.data.phash import DEFAULT_THRESHOLD, array_duplicate_groups
        from protloc.data.validate import near_duplicate_groups

        thr = DEFAULT_THRESHOLD if threshold is None else threshold
        if images is not None:
            if len(images) != len(table):
                raise InputError("make_folds images", expected=f"{len(table)} decoded images",
                                 got=str(len(images)), fix="pass the table's own decoded array")
            linked = array_duplicate_groups(images, fmt=table.fmt, channels=table.channels, threshold=thr,
                                            rotations=rotations)
        else:
            linked = near_duplicate_groups(table, threshold=thr, rotations=rotations, progress=progress,
                                           workers=workers)
    units = unit_ids(len(table), groups=groups, linked=linked)
    y = table.y() if table.labeled else np.zeros((len(table), 0), np.uint8)
    return stratified_folds(y, units, n_folds=n_folds, seed=seed, holdout=holdout)


def fold_class_counts(y: np.ndarray, folds: np.ndarray) -> dict[int, np.ndarray]:
    """Per fold: number of validation images of each class.

    Examples
    --------
    >>> fold_class_counts(np.array([[1, 0], [1, 1], [0, 1]]), np.array([0, 1, 1]))[1].tolist()
    [1, 2]
    """
    return {int(k): np.asarray(y)[folds == k].sum(axis=0) for k in np.unique(folds)}
