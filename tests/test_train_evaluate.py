"""`protloc evaluate` and `protloc score` outputs and error messages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.reports.evaluate import score_frames
from protloc.core.schema import get_schema


def test_evaluate_prints_table_and_saves_json(trained_run, tiny_rgb, tmp_path, capsys):
    csv, images = tiny_rgb
    out = tmp_path / "ev.json"
    assert main(["evaluate", str(trained_run), "--csv", str(csv), "--images", str(images), "--tta", "flip",
                 "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "macro F1" in text and "Mitochondria" in text and "precision" in text
    s = json.loads(out.read_text())
    assert s["n_images"] == 40 and len(s["per_class"]) == 10 and s["tta"] == "flip"
    assert {"precision", "recall", "f1", "support", "ap"} <= set(s["per_class"][0])
    assert {"macro_f1", "micro_f1", "samples_f1", "mAP"} <= set(s)


def test_evaluate_not_a_run(tmp_path, tiny_rgb, capsys):
    csv, images = tiny_rgb
    assert main(["evaluate", str(tmp_path / "nope"), "--csv", str(csv), "--images", str(images)]) == 2
    assert "run folder not found. Fix:" in capsys.readouterr().err


def _write(tmp_path, truth, pred):
    t, p = tmp_path / "truth.csv", tmp_path / "pred.csv"
    pd.DataFrame(truth, columns=["Image", "Label"]).to_csv(t, index=False)
    pd.DataFrame(pred, columns=["Image", "Predicted"]).to_csv(p, index=False)
    return t, p


def test_score_cli_per_class_and_json(tmp_path, capsys):
    t, p = _write(tmp_path, [("1", "0"), ("2", "1 4"), ("3", "4")], [("3", "4"), ("1", "0 1"), ("2", "")])
    assert main(["score", "--truth", str(t), "--pred", str(p), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "Nucleoplasm" in out and "macro F1" in out
    s = json.loads((tmp_path / "s.json").read_text())
    # class 0: tp1 fp0 fn0 -> 1; class 1: fp1 fn1 -> 0; class 4: tp1 fn1 -> 2/3; 7 absent classes count 0
    assert s["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 10)
    assert s["macro_f1_skip_empty"] == pytest.approx((1 + 0 + 2 / 3) / 3)


@pytest.mark.parametrize("pred,match", [
    ([("1", "0")], r"pred\.csv: expected a prediction for every Image of truth\.csv, got 1 missing \(e\.g\. 2\)"),
    ([("1", "0"), ("2", "1"), ("9", "1")], r"expected only Images that are in truth\.csv, got 1 unknown ids \(e\.g\. 9\)"),
    ([("1", "0"), ("2", "12")], r"pred\.csv line 3 \(id 2\): expected class ids 0-9, got 12\. Fix: check the label"),
    ([("1", "0"), ("1", "0"), ("2", "1")], r"pred\.csv: expected one row per Image, got 1 duplicate ids"),
])
def test_score_errors(tmp_path, capsys, pred, match):
    t, p = _write(tmp_path, [("1", "0"), ("2", "1")], pred)
    assert main(["score", "--truth", str(t), "--pred", str(p)]) == 2
    err = capsys.readouterr().err
    assert "Fix:" in err
    with pytest.raises(InputError, match=match):
        from protloc.reports.evaluate import score_files

        score_files(t, p)


def test_score_frames_pure():
    s = score_frames(pd.DataFrame({"Image": ["a"], "Label": ["3"]}), pd.DataFrame({"Image": ["a"], "Predicted": ["3"]}),
                     schema=get_schema("ghent10"))
    assert s["per_class_f1"][3] == 1.0 and s["macro_f1"] == pytest.approx(0.1)
