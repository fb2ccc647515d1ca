"""Structured errors: fields in, today's one-line message out; readers use the fields."""

from __future__ import annotations

import pickle

import pytest

from protloc.core.errors import InputError, RunFolderError, check_choice


def test_fields_and_exact_message():
    e = InputError("train.csv line 3", expected="integer class ids", got="'x'", fix="use ids 0-9")
    assert (e.what, e.expected, e.got, e.fix) == ("train.csv line 3", "integer class ids", "'x'", "use ids 0-9")
    assert str(e) == "train.csv line 3: expected integer class ids, got 'x'. Fix: use ids 0-9."
    assert e.problem == "train.csv line 3: expected integer class ids, got 'x'"
    assert e.detail == "expected integer class ids, got 'x'"
    assert isinstance(e, ValueError) and e.args == (str(e),)
    with pytest.raises(InputError, match=r"line 3: expected integer class ids, got 'x'\. Fix: use ids 0-9\.$"):
        raise e


def test_free_form_with_and_without_fix():
    e = InputError("data/x.csv: CSV file not found", fix="check the --csv path")
    assert str(e) == "data/x.csv: CSV file not found. Fix: check the --csv path"
    assert (e.problem, e.fix, e.expected, e.got) == ("data/x.csv: CSV file not found", "check the --csv path", None, None)
    plain = InputError("something went wrong")
    assert str(plain) == plain.problem == plain.detail == "something went wrong" and plain.fix is None


def test_every_error_is_built_from_fields():
    """The issue-11 codemod left no message assembled by hand: no fmt_problem helper and no
    ``"... Fix: ..."`` text inside an error's first argument anywhere in the package."""
    import ast
    from pathlib import Path

    import protloc

    names = {"InputError", "RunFolderError", "ImageReadError"}
    left = []
    for f in Path(protloc.__file__).parent.rglob("*.py"):
        src = f.read_text(encoding="utf-8")
        assert "fmt_problem" not in src, f
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in names \
                    and node.args:
                text = "".join(c.value for c in ast.walk(node.args[0])
                               if isinstance(c, ast.Constant) and isinstance(c.value, str))
                if ". Fix: " in text:
                    left.append(f"{f.name}:{node.lineno}")
    assert not left, left


def test_fields_survive_pickling():
    """Worker processes send errors back pickled; the fields and the class must survive."""
    for e in (RunFolderError("run/", expected="a run folder", got="nothing", fix="train first"),
              InputError("free", fix="f")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)
        assert (back.what, back.expected, back.got, back.fix) == (e.what, e.expected, e.got, e.fix)


def test_check_choice():
    with pytest.raises(InputError) as info:
        check_choice("merge", "median", ("mean", "max"))
    assert (info.value.what, info.value.got) == ("merge", "'median'")


def test_lenient_table_reads_fields_not_messages(tmp_path):
    """Ragged rows and bad labels become (severity, code, where, message, fix) from the error fields."""
    from protloc.data.table import lenient_table, load_table, ragged_problem, read_csv_table

    from helpers import make_tiny_dataset

    csv, imgs = make_tiny_dataset(tmp_path, n=4)
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",1,4"      # class ids split by the column separator
    lines[2] = lines[2].split(",")[0] + ",x"        # not a class id
    lines[3] = lines[3].split(",")[0] + ","         # empty label
    csv.write_text("\n".join(lines) + "\n")
    df, _, _ = read_csv_table(csv)
    [(ln, err)] = ragged_problem(df, csv)
    assert ln == 2 and isinstance(err, InputError) and (err.expected, err.got) == ("2 cells (Image,Label)", "3")
    _, problems = lenient_table(csv, imgs)
    by_code = {p[1]: p for p in problems}
    assert by_code["extra_cells"] == ("error", "extra_cells", "train.csv line 2", "expected 2 cells (Image,Label), got 3",
                                      "separate class ids with spaces (1 4), not the column separator, or quote the value")
    assert by_code["bad_label"][3:] == ("expected integer class ids 0-9, got 'x'", "use integer ids separated by spaces")
    assert by_code["empty_label"][3] == "expected at least one class id, got an empty label"
    with pytest.raises(InputError, match=r"train.csv line 2: expected 2 cells \(Image,Label\), got 3\. Fix: "):
        load_table(csv, imgs)


def _finding(tmp_path, kind):
    """The error finding of `protloc validate` for image 1001 broken in one way."""
    import numpy as np
    from PIL import Image

    from protloc.data.filecheck import inspect_image

    from helpers import make_tiny_dataset

    _, imgs = make_tiny_dataset(tmp_path, n=2)
    if kind == "grayscale":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(imgs / "1001.png")
    else:
        (imgs / "1001.png").write_bytes(b"not a png")
    [problem] = [p for p in inspect_image(imgs, "1001", "rgb", ("red", "green", "blue"))["problems"]
                 if p[0] == "error"]
    return problem


def test_image_problems_come_from_the_error_fields(tmp_path):
    assert _finding(tmp_path, "grayscale") == (
        "error", "wrong_channels", "1001.png: expected an RGB image (3 channels), got grayscale (1 channel)",
        "use --format hpa-channels/tiff for other layouts, or convert the image to RGB")


def test_free_form_image_errors_keep_message_and_fix_apart(tmp_path):
    sev, code, message, fix = _finding(tmp_path, "corrupt")
    assert (sev, code, fix) == ("error", "unreadable", "re-export the file as PNG/TIFF or remove its row")
    assert message.startswith("1001.png: unreadable, corrupt or truncated image (") and "Fix" not in message
