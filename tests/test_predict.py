"""Predictor and `protloc predict` on an untrained fake run (test_resnet, 32 px)."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import protloc
from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.inference.predictor import Predictor, d4_views, tta_views


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    from helpers import make_fake_run

    return make_fake_run(tmp_path_factory.mktemp("run2"), folds=2, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from helpers import make_tiny_dataset

    csv, images = make_tiny_dataset(tmp_path_factory.mktemp("pdata"), n=12, size=32, seed=1)
    return csv, images


@pytest.fixture(scope="module")
def pred(run2):
    return Predictor.from_run(run2)


def _thresholds(run, values, **extra):
    (run / "thresholds.json").write_text(json.dumps({"thresholds": list(values), **extra}))


def test_d4_views_are_the_dihedral_group():
    import torch

    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    views = d4_views(x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x)
    # the set of views of a rotated image is the same set
    rot = {tuple(v.flatten().tolist()) for v in d4_views(torch.rot90(x, 1, (2, 3)))}
    assert rot == {tuple(v.flatten().tolist()) for v in views}
    np.testing.assert_array_equal(d4_views(x.numpy())[5], views[5].numpy())
    assert len(tta_views(x, "flip")) == 2


def test_d4_tta_is_rotation_invariant(pred):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)
    batch = np.stack([img, np.rot90(img).copy(), img[:, ::-1].copy(), np.rot90(img, 3).copy()])
    p = pred.predict_array(batch, tta="d4")
    for k in range(1, 4):
        np.testing.assert_allclose(p[k], p[0], atol=1e-5)
    plain = pred.predict_array(batch, tta="none")
    assert not np.allclose(plain[1], plain[0], atol=1e-5)  # the model itself is not invariant


def test_ensemble_of_two_folds(run2, pred):
    assert pred.folds == [0, 1] and len(pred.models) == 2
    rng = np.random.default_rng(1)
    b = rng.integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    p0 = Predictor.from_run(run2, folds=[0]).predict_array(b)
    p1 = Predictor.from_run(run2, folds=1).predict_array(b)
    assert not np.allclose(p0, p1)
    np.testing.assert_allclose(pred.predict_array(b), (p0 + p1) / 2, atol=1e-6)
    np.testing.assert_allclose(pred.predict_array(b, merge="max"), np.maximum(p0, p1), atol=1e-6)
    with pytest.raises(InputError, match=r"expected models/fold7.pt, got folds \[0, 1\]"):
        Predictor.from_run(run2, folds=[7])


def test_load_run_paths_and_arrays(run2, data):
    _, images = data
    p = protloc.load_run(run2)
    files = sorted(images.glob("*.png"))[:3]
    res = p.predict(files, tta="flip")
    assert res.ids == [f.stem for f in files]
    assert res.probs.shape == (3, 10) and res.probs.dtype == np.float32
    assert p.thresholds.tolist() == [0.5] * 10 and p.classes[0] == "Mitochondria"
    arrs = np.stack([np.asarray(Image.open(f)) for f in files])
    res2 = p.predict(arrs, tta="flip")
    np.testing.assert_allclose(res2.probs, res.probs, atol=1e-6)
    assert res2.ids == ["0", "1", "2"]
    res3 = p.predict(list(arrs), batch_size=2)
    assert len(res3) == 3 and all(s == " ".join(map(str, ls)) for s, ls in zip(res3.label_strings, res3.labels))
    one = p.predict(str(files[0]))
    assert one.ids == [files[0].stem]


def test_channel_mismatch_names_the_file(pred, tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(gray)
    with pytest.raises(InputError, match=r"gray.png: expected 3 channels \(red, green, blue\), got 1 channels"):
        pred.predict([gray])
    with pytest.raises(InputError, match=r"image 0: expected 3 channels \(red, green, blue\), got 4 channels"):
        pred.predict_array(np.zeros((1, 32, 32, 4), np.uint8))


def test_other_size_is_resized_warning_once_only_when_enlarging(run2):
    p = Predictor.from_run(run2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = p.predict_array(np.zeros((2, 48, 48, 3), np.uint8))  # shrinking: as in training
        assert not [x for x in w if "resized" in str(x.message)]
        p.predict_array(np.zeros((1, 24, 24, 3), np.uint8))
        p.predict_array(np.zeros((1, 20, 20, 3), np.uint8))
    assert out.shape == (2, 10)
    msgs = [str(x.message) for x in w if "resized" in str(x.message)]
    assert len(msgs) == 1 and "24x24 differs from the run's 32x32" in msgs[0]


def test_submission_format_and_probs(run2, data, tmp_path):
    csv, images = data
    # shuffled CSV order must be kept
    df = pd.read_csv(csv, dtype=str).sample(frac=1, random_state=0)[["Image"]]
    ids_csv = tmp_path / "test.csv"
    df.to_csv(ids_csv, index=False)
    _thresholds(run2, [0.45] * 5 + [0.55] * 5)
    try:
        out, probs = tmp_path / "sub.csv", tmp_path / "probs.csv"
        rc = main(["predict", str(run2), "--images", str(images), "--csv", str(ids_csv), "--out", str(out),
                   "--probs", str(probs), "--tta", "d4", "--batch-size", "5", "--no-progress"])
        assert rc == 0
        lines = out.read_text().splitlines()
        assert lines[0] == "Image,Label"
        sub = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert sub["Image"].tolist() == df["Image"].tolist()
        pr = pd.read_csv(probs, dtype={"Image": str})
        assert list(pr.columns) == ["Image"] + list(protloc.load_run(run2).classes)
        assert pr["Image"].tolist() == df["Image"].tolist()
        thr = np.array([0.45] * 5 + [0.55] * 5)
        for lab, row in zip(sub["Label"], pr.iloc[:, 1:].to_numpy()):
            ids = [int(t) for t in lab.split()]
            assert ids == sorted(ids)
            assert ids == np.flatnonzero(row >= thr - 1e-6).tolist() or \
                ids == np.flatnonzero(row >= thr + 1e-6).tolist()  # 6-decimal CSV rounding
    finally:
        (run2 / "thresholds.json").unlink()


def test_empty_label_unless_at_least_one(run2, data, tmp_path):
    _, images = data
    _thresholds(run2, [1.0] * 10)
    try:
        out = tmp_path / "sub.csv"
        assert main(["predict", str(run2), "--images", str(images), "--out", str(out), "--no-progress"]) == 0
        lines = out.read_text().splitlines()
        assert lines[1:] == [f"{1000 + i}," for i in range(12)]  # folder order, empty labels
        assert main(["predict", str(run2), "--images", str(images), "--out", str(out), "--no-progress",
                     "--at-least-one"]) == 0
        sub = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert (sub["Label"].str.len() > 0).all() and (~sub["Label"].str.contains(" ")).all()
    finally:
        (run2 / "thresholds.json").unlink()


def test_corrupt_image_leaves_no_submission(run2, data, tmp_path, capsys):
    import shutil

    _, images = data
    imgs = tmp_path / "imgs"
    shutil.copytree(images, imgs)
    (imgs / "1007.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    out, probs = tmp_path / "sub.csv", tmp_path / "probs.csv"
    rc = main(["predict", str(run2), "--images", str(imgs), "--out", str(out), "--probs", str(probs),
               "--batch-size", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "1007.png" in err and "corrupt" in err
    assert not out.exists() and not probs.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sub.csv")]  # no temp left
    rc = main(["predict", str(run2), "--images", str(imgs), "--out", str(out), "--batch-size", "2",
               "--no-progress", "--skip-bad"])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped:" in err and "1007" in err
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(sub) == 11 and "1007" not in sub["Image"].tolist()


def test_missing_ids_and_bad_run(run2, data, tmp_path, capsys):
    _, images = data
    ids = tmp_path / "ids.csv"
    ids.write_text("Image\n1000\n9999\n")
    out = tmp_path / "s.csv"
    assert main(["predict", str(run2), "--images", str(images), "--csv", str(ids), "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ids.csv line 3 (id 9999): image file missing" in err and not out.exists()
    assert main(["predict", str(tmp_path / "nope"), "--images", str(images), "--out", str(out)]) == 2
    assert "run folder not found" in capsys.readouterr().err
    empty_run = tmp_path / "emptyrun"
    empty_run.mkdir()
    (empty_run / "preprocessing.json").write_text((run2 / "preprocessing.json").read_text())
    assert main(["predict", str(empty_run), "--images", str(images), "--out", str(out)]) == 2
    assert "no trained model in models/" in capsys.readouterr().err
    (tmp_path / "noimg").mkdir()
    assert main(["predict", str(run2), "--images", str(tmp_path / "noimg"), "--out", str(out)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_table_channel_mismatch(run2, tmp_path):
    from helpers import make_tiny_dataset

    from protloc.data.table import load_table

    csv, images = make_tiny_dataset(tmp_path / "hpa", n=2, fmt="hpa-channels",
                                    channels=("red", "green", "blue", "yellow"))
    t = load_table(csv, images, fmt="hpa-channels", channels="all", labels=False)
    with pytest.raises(InputError, match=r"expected 3 channels \(red, green, blue\) like the run, got 4"):
        Predictor.from_run(run2).predict_table(t)


def test_thresholds_json_is_used(run2):
    _thresholds(run2, [0.0] * 10, at_least_one=True, classes=list(protloc.load_run(run2).classes))
    try:
        p = Predictor.from_run(run2)
        assert p.at_least_one and p.thresholds.tolist() == [0.0] * 10
        res = p.predict(np.zeros((1, 32, 32, 3), np.uint8))
        assert res.label_strings == ["0 1 2 3 4 5 6 7 8 9"]
        _thresholds(run2, [0.5] * 3)
        with pytest.raises(InputError, match=r"thresholds.json: expected 10 thresholds \(one per class\), got 3"):
            Predictor.from_run(run2)
    finally:
        (run2 / "thresholds.json").unlink()


def test_bad_options(pred):
    with pytest.raises(InputError, match=r"tta: expected one of none, flip, d4, got 'd8'"):
        pred.predict_array(np.zeros((1, 32, 32, 3), np.uint8), tta="d8")
    with pytest.raises(InputError, match=r"merge: expected one of mean, max, got 'median'"):
        pred.predict_array(np.zeros((1, 32, 32, 3), np.uint8), merge="median")


def test_labeled_table_schema_must_match_run(run2, data):
    from protloc.data.table import load_table

    csv, images = data
    t = load_table(csv, images, schema="hpa28")
    with pytest.raises(InputError, match=r"label schema 'hpa28' of .*: expected the run's schema 'ghent10' "
                                         r"\(10 classes\), got 28 classes"):
        Predictor.from_run(run2).predict_table(t)
    res = Predictor.from_run(run2).predict_table(load_table(csv, images), batch_size=5)
    assert res.ids == [str(1000 + i) for i in range(12)] and res.skipped == []


def test_hpa_channel_order_and_paths(tmp_path):
    from helpers import make_tiny_dataset

    from protloc.models.network import ModelSpec, build_model
    from protloc.core.preprocessing import Preprocessing
    from protloc.core.schema import get_schema
    from protloc.data.table import load_table

    chans = ("red", "green", "blue", "yellow")
    pre = Preprocessing(fmt="hpa-channels", channels=chans, size=32, mean=(0.1,) * 4, std=(0.2,) * 4,
                        schema=get_schema("ghent10"))
    p = Predictor(pre, [build_model(ModelSpec("test_resnet", in_chans=4, num_classes=10))])
    csv, images = make_tiny_dataset(tmp_path / "hpa", n=3, fmt="hpa-channels", channels=chans)
    swapped = load_table(csv, images, fmt="hpa-channels", channels="green,red,blue,yellow", labels=False)
    with pytest.raises(InputError, match=r"--channels: expected red,green,blue,yellow \(the run's channels, "
                                         r"in its order\), got green,red,blue,yellow"):
        p.predict_table(swapped)
    res = p.predict_table(load_table(csv, images, fmt="hpa-channels", channels="all", labels=False))
    by_path = p.predict([images / "1000", images / "1001", images / "1002"])  # DIR/ID for channel files
    assert by_path.ids == res.ids == ["1000", "1001", "1002"]
    np.testing.assert_allclose(by_path.probs, res.probs, atol=1e-6)
