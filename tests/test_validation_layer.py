"""The validation layer of issue 15 piece by piece: the checked CSV reader's line numbers, the value
types and path checks of ``cli/options.py``, no silent row drops, no half-made run folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from protloc.cli.main import main
from protloc.core.errors import InputError

from helpers import make_tiny_dataset


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def test_quoted_label_spanning_lines_keeps_real_line_numbers(tmp_path, capsys):
    """A quoted label over two lines is one record (lines 2-3); the next bad row is line 4, not a
    phantom row 3 with id '4\"'."""
    csv, imgs = make_tiny_dataset(tmp_path, n=3, size=8)
    csv.write_text('Image,Label\n1000,"1\n4"\n1001,x\n1002,2\n')
    assert main(["validate", "--csv", str(csv), "--images", str(imgs), "--no-near-dup"]) == 2
    assert _errors(capsys) == ["error: train.csv line 4 (id 1001): expected integer class ids 0-9, got 'x'. "
                               "Fix: use integer ids separated by spaces."]
    csv.write_text('Image,Label\n1000,"1\n4"\n1001,3\n1002,"2\n')
    assert main(["split", "--csv", str(csv), "--images", str(imgs), "--no-near-dup", "--folds", "2",
                 "--out", str(tmp_path / "s.csv")]) == 2
    [err] = _errors(capsys)
    assert err.startswith("error: ") and err.endswith('train.csv line 5: a quoted field (") is never closed. '
                                                      'Fix: close the quote or remove it')


def test_csv_reader_records_and_refusals(tmp_path):
    from protloc.core.readers import read_csv_rows

    p = tmp_path / "t.csv"
    p.write_bytes("\ufeffImage;Label\r\n\r\n1;\"2\r\n3\"\r\n4;5;6\r\n".encode())
    r = read_csv_rows(p)
    assert (r.header, r.sep, r.rows, r.ragged) == (["Image", "Label"], ";", [(3, ["1", "2\r\n3"]), (5, ["4", "5"])],
                                                   [(5, 3)])
    p.write_text("Image,Image\n1,2\n")
    with pytest.raises(InputError, match=r"t.csv line 1: expected unique column names, got 'Image' twice"):
        read_csv_rows(p)
    p.write_bytes(b"Image,Label\n1,\xff\n")
    with pytest.raises(InputError, match=r"t.csv line 2: not a UTF-8 text file\. Fix: save the CSV as UTF-8"):
        read_csv_rows(p)


@pytest.mark.parametrize("text,expected", [
    ("3", 3), (" 7 ", 7), ("-1", "expected an integer >= 0, got -1"), ("\u0663", "got '\u0663'"),
    ("1.5", "got '1.5'"), ("9" * 30, "got '999"), ("", "got ''"),
])
def test_integer_type(text, expected):
    from protloc.cli.options import nonneg_int

    if isinstance(expected, int):
        assert nonneg_int(text) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=expected.replace("(", r"\(")):
            nonneg_int(text)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "0", "1", "\u0660.5", "0x1"])
def test_fraction_type_refuses(text):
    from protloc.cli.options import fraction

    with pytest.raises(argparse.ArgumentTypeError, match="expected a fraction between 0 and 1"):
        fraction(text)


def test_path_kinds_and_checks(tmp_path):
    from protloc.core.paths import check_input_file, check_output_dir, check_output_file, path_kind

    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken")
    (tmp_path / "f").write_text("x")
    assert [path_kind(tmp_path / n) for n in ("fifo", "loop", "broken", "f", "missing", "f/below")] == \
        ["fifo", "loop", "broken-link", "file", "missing", "missing"]
    with pytest.raises(InputError, match=r"--csv: expected a CSV file, got .*loop \(a symlink loop\)\. Fix: fix or"):
        check_input_file(tmp_path / "loop", flag="--csv", what="CSV file")
    with pytest.raises(InputError, match=r"--out: expected a file name \(a regular file is replaced\), got .*fifo"):
        check_output_file(tmp_path / "fifo", flag="--out")
    with pytest.raises(InputError, match=r"--out: expected a file name, got .* \(a folder\)"):
        check_output_file(tmp_path, flag="--out")
    with pytest.raises(InputError, match=r"--out: expected a folder \(new or existing\), got .*/f \(a file\)"):
        check_output_dir(tmp_path / "f", flag="--out")
    check_output_file(tmp_path / "new" / "deeper" / "x.csv", flag="--out")  # missing folders are created later
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root may write anywhere")
def test_unwritable_output_folder(tmp_path):
    from protloc.core.paths import check_output_file

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match=r"--out: expected a path in a folder you can write to"):
            check_output_file(ro / "sub" / "x.csv", flag="--out")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_odd_entry_named_like_an_image_is_told_what_it_is(tmp_path, capsys, kind):
    csv, imgs = make_tiny_dataset(tmp_path, n=3, size=8)
    (imgs / "1001.png").unlink()
    if kind == "fifo":
        os.mkfifo(imgs / "1001.png")
    else:
        os.symlink(imgs / "1001.png", imgs / "1001.png")
    assert main(["validate", "--csv", str(csv), "--images", str(imgs), "--no-near-dup"]) == 2
    what = "a named pipe (FIFO)" if kind == "fifo" else "a symlink loop"
    assert _errors(capsys) == [f"error: train.csv line 3 (id 1001): 1001.png is {what}, not an image file. "
                               f"Fix: {'fix or remove the symlink' if kind == 'loop' else 'replace 1001.png with the image file'}"
                               ", or delete the row."]


def test_train_counts_rows_dropped_by_schema_mapping_on_screen_and_in_the_log(tmp_path, capsys, monkeypatch):
    """``--from-schema hpa28`` drops images whose labels have no ghent10 class: said on screen and
    in train.log (here training stops right after, at the data step)."""
    import protloc.training.train as tt

    csv, imgs = make_tiny_dataset(tmp_path / "d", n=20, size=8)
    rows = csv.read_text().splitlines()
    unmapped = {2, 5, 6, 9, 11, 14, 17}  # 7 of 20 rows get hpa28 class 1 (nuclear membrane: no ghent10 class)
    csv.write_text("\n".join([rows[0]] + [r.split(",")[0] + ("," + ("1" if i in unmapped else "0 23"))
                                          for i, r in enumerate(rows[1:])]) + "\n")

    def stop(*a, **k):
        raise InputError("stopped by the test after the notes")

    monkeypatch.setattr(tt, "load_data", stop)
    out = tmp_path / "run"
    out.mkdir()  # an existing folder: kept, with its train.log
    assert main(["train", "--csv", str(csv), "--images", str(imgs), "--out", str(out), "--from-schema", "hpa28",
                 "--model", "test_resnet", "--pretrained", "none", "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert "note: dropped 7 of 20 images with no label in ghent10" in err
    assert "note: dropped 7 of 20 images with no label in ghent10" in (out / "train.log").read_text()
    # a run folder that did not exist is not left half-made when training fails before its setup
    assert main(["train", "--csv", str(csv), "--images", str(imgs), "--out", str(tmp_path / "new"), "--from-schema",
                 "hpa28", "--model", "test_resnet", "--pretrained", "none", "--size", "16", "--quiet"]) == 2
    assert "note: dropped 7 of 20 images" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_argparse_errors_in_house_style(capsys):
    assert main(["predict"]) == 2
    assert _errors(capsys) == ["error: the following arguments are required: run, --out. Fix: add them "
                               "(see `protloc predict --help`)."]
    assert main(["trian"]) == 2
    assert _errors(capsys)[0].startswith("error: COMMAND: expected one of demo, synth,")
    assert main(["split", "--folds", "2", "--holdout", "0.2"]) == 2
    assert _errors(capsys) == ["error: --holdout and --folds: expected one of them, got both. Fix: drop one."]


def test_device_resolution():
    import torch

    from protloc.models.device import resolve_device

    assert resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "cpu:1", "cuda:99999"):
        with pytest.raises(InputError, match=r"--device: expected"):
            resolve_device(bad)


def test_pretrained_file_checks(tmp_path):
    import torch

    from protloc.core.config import TrainConfig
    from protloc.training import check_pretrained

    p = tmp_path / "w.pth"
    torch.save({"epoch": 3}, p)
    with pytest.raises(InputError, match=r"--pretrained: expected a state dict .*\(a dict without tensors\)"):
        check_pretrained(TrainConfig(model="test_resnet", pretrained=str(p)))
    with pytest.raises(InputError, match=r"--pretrained: expected none, auto, offline, hub or a weights file, got "
                                         r"'.*' \(a folder\)"):
        check_pretrained(TrainConfig(model="test_resnet", pretrained=str(tmp_path)))
    check_pretrained(TrainConfig(model="test_resnet", pretrained="none"))


def test_hardware_combination_refused_before_any_file(tmp_path):
    from protloc.core.config import TrainConfig
    from protloc.training import check_hardware

    with pytest.raises(InputError, match=r"--accelerator cpu --devices 0,1 --strategy auto --precision auto: "
                                         r"expected a hardware setup Lightning can run on this machine"):
        check_hardware(TrainConfig(accelerator="cpu", devices="0,1"))
    check_hardware(TrainConfig(accelerator="cpu", devices="1"))
    assert not any(Path(tmp_path).iterdir())
