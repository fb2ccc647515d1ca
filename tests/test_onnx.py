"""ONNX export: parity with torch within 1e-4, sidecar metadata, CLI, errors."""

import json

import numpy as np
import pytest

from protloc.cli.main import main
from protloc.core.errors import InputError, RunFolderError
from protloc.inference.predictor import Predictor


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    from helpers import make_fake_run

    return make_fake_run(tmp_path_factory.mktemp("onnxrun"), folds=2, seed=5)


def test_onnx_engine_matches_torch(run2, capsys):
    with pytest.raises(RunFolderError, match=r"other.onnx: no ONNX model. Fix: run `protloc export"):
        Predictor.from_run(run2, engine="onnx", onnx_path=run2 / "other.onnx")
    assert main(["export", str(run2)]) == 0
    assert "max |diff|" in capsys.readouterr().out
    meta = json.loads((run2 / "model.onnx.json").read_text())
    assert meta["folds"] == [0, 1] and meta["preprocessing"]["size"] == 32
    assert meta["input"]["layout"] == "NCHW" and meta["max_abs_diff"] < 1e-4
    rng = np.random.default_rng(0)
    b = rng.integers(0, 255, (5, 32, 32, 3)).astype(np.uint8)
    pt, po = Predictor.from_run(run2, engine="torch"), Predictor.from_run(run2, engine="onnx")
    assert po.engine == "onnx" and po._models == [] and po.folds == [0, 1]
    for tta, merge in [("none", "mean"), ("d4", "mean"), ("flip", "max")]:
        np.testing.assert_allclose(po.predict_array(b, tta=tta, merge=merge),
                                   pt.predict_array(b, tta=tta, merge=merge), atol=1e-4)
    with pytest.raises(InputError, match=r"expected an export of folds \[0\], got folds \[0, 1\]"):
        Predictor.from_run(run2, engine="onnx", folds=[0], onnx_path=run2 / "model.onnx")
    p0 = Predictor.from_run(run2, engine="onnx", folds=[0])  # a fold subset is exported and cached on its own
    assert p0.folds == [0] and p0.model_file.name == "model.folds-0.onnx"
    np.testing.assert_allclose(p0.predict_array(b), Predictor.from_run(run2, engine="torch", folds=[0])
                               .predict_array(b), atol=1e-4)


def test_onnx_usable_alone_and_single_fold(run2, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "f1.onnx"
    assert main(["export", str(run2), "--onnx", str(out), "--fold", "1"]) == 0
    meta = json.loads((tmp_path / "f1.onnx.json").read_text())
    assert meta["folds"] == [1]
    from protloc.core.preprocessing import Preprocessing

    pre = Preprocessing.from_dict(meta["preprocessing"])
    b = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"input": pre.normalize(b)})[0]  # batch 3 though exported with 2
    ref = Predictor.from_run(run2, folds=[1], engine="torch").predict_array(b)
    np.testing.assert_allclose(probs, ref, atol=1e-4)
    assert main(["export", str(run2), "--fold", "9"]) == 2


def test_cli_predict_onnx_engine(run2, tmp_path):
    from helpers import make_tiny_dataset

    _, images = make_tiny_dataset(tmp_path / "d", n=4, size=32)
    if not (run2 / "model.onnx").is_file():
        assert main(["export", str(run2)]) == 0
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for eng, out in (("torch", a), ("onnx", b)):
        assert main(["predict", str(run2), "--images", str(images), "--out", str(tmp_path / "s.csv"),
                     "--probs", str(out), "--engine", eng, "--no-progress"]) == 0
    import pandas as pd

    pa, pb = pd.read_csv(a), pd.read_csv(b)
    np.testing.assert_allclose(pa.iloc[:, 1:].to_numpy(), pb.iloc[:, 1:].to_numpy(), atol=1e-4)


def test_onnx_metadata_reads_the_stamp_without_onnx_and_refuses_garbage(tmp_path):
    """The fingerprint check reads metadata_props from the wire format (issue 13: no
    ``onnx.load`` at start-up) and gives what onnx gives; damaged files are 'not ours'."""
    import onnx
    from onnx import helper

    from protloc.inference.onnx import _graph_fingerprint, onnx_metadata

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    helper.set_model_props(m, {"protloc_fingerprint": "f" * 64, "other": "é"})
    f = tmp_path / "m.onnx"
    onnx.save(m, str(f))
    assert onnx_metadata(f) == {p.key: p.value for p in onnx.load(str(f)).metadata_props}
    assert _graph_fingerprint(f) == "f" * 64
    data = f.read_bytes()
    rng = np.random.default_rng(0)
    for bad in (data[:len(data) // 2], b"\xff" * 40, rng.bytes(300), b""):
        f.write_bytes(bad)
        assert _graph_fingerprint(f) is None
    assert _graph_fingerprint(tmp_path / "missing.onnx") is None
