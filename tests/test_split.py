import shutil

import numpy as np
import pandas as pd
import pytest

from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.data.split import fold_class_counts, make_folds, stratified_folds, unit_ids
from protloc.data.table import load_table

from helpers import make_tiny_dataset


def _y(n, c=5, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    y[np.arange(n), np.arange(n) % c] = 1
    return y


def test_stratified_folds_deterministic_and_balanced():
    y = _y(200)
    a = stratified_folds(y, np.arange(200), n_folds=5, seed=3)
    assert np.array_equal(a, stratified_folds(y, np.arange(200), n_folds=5, seed=3))
    assert not np.array_equal(a, stratified_folds(y, np.arange(200), n_folds=5, seed=4))
    assert all(35 <= c <= 45 for c in np.bincount(a))
    counts = np.stack(list(fold_class_counts(y, a).values()))
    assert (counts.max(0) - counts.min(0)).max() <= 2          # each class spread evenly


def test_groups_stay_in_one_fold_and_holdout():
    y = _y(120)
    groups = [i // 4 for i in range(120)]
    units = unit_ids(120, groups=groups, linked=[[0, 117]])
    f = stratified_folds(y, units, n_folds=4, seed=0)
    for g in range(30):
        assert len(set(f[np.array(groups) == g])) == 1
    assert f[0] == f[117]
    h = stratified_folds(y, np.arange(120), seed=0, holdout=0.25)
    assert set(h.tolist()) == {-1, 0} and abs((h == 0).sum() - 30) <= 4
    with pytest.raises(InputError, match=r"--folds: expected 2 to 3 folds"):
        stratified_folds(y[:3], np.arange(3), n_folds=5)
    with pytest.raises(InputError, match=r"--holdout: expected a fraction between 0 and 1, got 1.5"):
        stratified_folds(y, np.arange(120), holdout=1.5)


def test_make_folds_keeps_duplicates_together(tmp_path):
    csv, imgs = make_tiny_dataset(tmp_path, n=30, size=32)
    shutil.copy(imgs / "1002.png", imgs / "1017.png")
    t = load_table(csv, imgs)
    f = make_folds(t, 5, seed=0, workers=1)
    assert f[2] == f[17] and f.shape == (30,)
    assert np.array_equal(f, make_folds(t, 5, seed=0, workers=1))
    from protloc.data.cache import load_cached

    imgs128 = load_cached(t, size=32, progress=False, workers=1).images
    assert np.array_equal(f, make_folds(t, 5, seed=0, images=imgs128))   # hashed from the cache
    unl = load_table(None, imgs)                                 # unlabeled: plain folds
    assert sorted(set(make_folds(unl, 3, near_dup=False).tolist())) == [0, 1, 2]


def test_split_cli_writes_csv_with_group_col(tmp_path, capsys):
    csv, imgs = make_tiny_dataset(tmp_path, n=24, size=32)
    df = pd.read_csv(csv)
    df["plate"] = [f"p{i // 3}" for i in range(24)]
    df.to_csv(csv, index=False)
    out = tmp_path / "splits.csv"
    rc = main(["split", "--csv", str(csv), "--images", str(imgs), "--folds", "4", "--group-col", "plate",
               "--no-near-dup", "--out", str(out), "--seed", "1"])
    assert rc == 0
    s = pd.read_csv(out, dtype={"Image": str})
    assert list(s.columns) == ["Image", "fold"] and s["Image"].tolist() == df["Image"].astype(str).tolist()
    assert (s.groupby(df["plate"])["fold"].nunique() == 1).all()
    text = capsys.readouterr().out
    assert "fold 3" in text and "Mitochondria" in text
    rc = main(["split", "--csv", str(csv), "--images", str(imgs), "--group-col", "nope", "--out", str(out)])
    assert rc == 2
    assert "--group-col: expected a column 'nope'" in capsys.readouterr().err


def test_split_reports_rows_dropped_by_schema_mapping(tmp_path, capsys):
    csv, imgs = make_tiny_dataset(tmp_path, n=5, size=16)
    csv.write_text("Image,Label\n1000,1\n1001,0\n1002,23\n1003,5\n1004,0 25\n")
    out = tmp_path / "s.csv"
    assert main(["split", "--csv", str(csv), "--images", str(imgs), "--from-schema", "hpa28", "--folds", "2",
                 "--no-near-dup", "--out", str(out)]) == 0
    assert "note: dropped 1 of 5 images with no label in ghent10" in capsys.readouterr().err
    assert pd.read_csv(out, dtype={"Image": str})["Image"].tolist() == ["1001", "1002", "1003", "1004"]
