"""The main job end to end, on a tiny plan: every stage runs and every output exists."""

import json
from pathlib import Path

import pandas as pd

from protloc.cli import demo


def test_demo_pipeline_end_to_end(tmp_path, monkeypatch, capsys):
    tiny = demo.DemoPlan(n_train=60, n_test=20, size=32, preset="fast", max_minutes=2.0, tta="flip", epochs=2)
    monkeypatch.setattr(demo, "QUICK", tiny)
    summary = demo.run_demo(tmp_path / "out", quick=True)
    out = capsys.readouterr().out
    for stage in ("synth", "validate", "explore", "train", "thresholds", "predict", "score", "report"):
        assert f"$ protloc {stage}" in out
    sub = pd.read_csv(summary["outputs"]["submission"], dtype=str, keep_default_na=False)
    truth = pd.read_csv(tmp_path / "out" / "data" / "test_labels.csv", dtype=str)
    assert list(sub.columns) == ["Image", "Label"] and len(sub) == 20
    assert set(sub.Image) == set(truth.Image)
    assert 0.0 <= summary["test_macro_f1"] <= 1.0
    for key in ("report", "explore", "probabilities"):
        assert Path(summary["outputs"][key]).is_file()
    assert json.loads((tmp_path / "out" / "demo.json").read_text())["test_macro_f1"] == summary["test_macro_f1"]
    # a rerun reuses the data and the trained run instead of starting over
    demo.run_demo(tmp_path / "out", quick=True)
    again = capsys.readouterr().out
    assert "using the existing synthetic dataset" in again and "using the trained run" in again
