"""Atomic outputs (issue #15): fsync before the rename, errors that name the user's path and a fix
(never the temp file), no temp file left behind, the CLI's one-line `error:` with exit 2."""

from __future__ import annotations

import errno
import os
import time

import pytest

from protloc.core import atomic
from protloc.core.atomic import OutputError, atomic_path, write_json, write_text


def _no_temps(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_fsync_file_before_rename_then_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", None))
        return real_replace(a, b)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    if events[0][1] is not None:
        assert events[0][1] is False and events[2][1] is True  # the file first, the folder after


def test_below_an_existing_file_names_the_users_path(tmp_path):
    blocker = tmp_path / "report.csv"
    blocker.write_text("x")
    target = blocker / "sub" / "scores.json"
    with pytest.raises(OutputError, match=r"is a file, not a folder\. Fix: choose an output path") as e:
        write_json(target, {"a": 1})
    msg = str(e.value)
    assert str(target) in msg and ".tmp" not in msg and str(blocker) in msg
    assert isinstance(e.value, ValueError)  # the CLI's InputError family


def test_output_that_is_a_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="existing folder. Fix: give a file name"):
        write_text(tmp_path / "out", "x")


def test_permission_denied_names_path_not_temp(tmp_path, monkeypatch):
    def deny(*a, dir=None, **k):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".x.abcdefgh.tmp"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", deny)
    with pytest.raises(OutputError, match="permission denied") as e:
        write_text(tmp_path / "x.json", "{}")
    assert str(tmp_path / "x.json") in str(e.value) and ".tmp" not in str(e.value)
    assert "Fix:" in str(e.value)


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, where):
    target = tmp_path / "preds.csv"
    target.write_text("old")
    if where == "fsync":
        monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        ctx = atomic_path(target)
        with pytest.raises(OutputError, match="no space left on the device. Fix: free some disk space") as e:
            with ctx as tmp:
                tmp.write_text("new")
    else:
        with pytest.raises(OutputError, match="no space left") as e:
            with atomic_path(target) as tmp:
                tmp.write_text("partial")
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert ".tmp" not in str(e.value) and str(target) in str(e.value)
    assert target.read_text() == "old" and _no_temps(tmp_path)


def test_other_errors_pass_through_and_clean_up(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
            open(tmp_path / "missing-input.csv")  # not about the output: unchanged
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
            raise KeyboardInterrupt
    assert _no_temps(tmp_path) and not (tmp_path / "a.txt").exists() and not (tmp_path / "b.txt").exists()


def test_stale_temps_of_a_killed_writer_are_removed(tmp_path):
    old = tmp_path / ".a.txt.k1ll3d_9.tmp"
    fresh = tmp_path / ".a.txt.runn1ng_.tmp"
    other = tmp_path / ".b.txt.zzzzzzzz.tmp"
    for p in (old, fresh, other):
        p.write_text("partial")
    past = time.time() - 2 * atomic.STALE_TEMP_S
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    write_text(tmp_path / "a.txt", "done")
    assert not old.exists() and fresh.exists() and other.exists()  # only this target's, only old ones


def test_cli_out_below_a_file_is_one_error_line(tmp_path, capsys):
    from protloc.cli.main import main

    truth = tmp_path / "truth.csv"
    truth.write_text("Image,Label\n1,0 1\n2,3\n")
    pred = tmp_path / "pred.csv"
    pred.write_text("Image,Predicted\n1,0\n2,3\n")
    blocker = tmp_path / "scores"
    blocker.write_text("I am a file")
    rc = main(["score", "--truth", str(truth), "--pred", str(pred), "--json", str(blocker / "s.json")])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert str(blocker / "s.json") in lines[0] and ".tmp" not in lines[0] and "Fix:" in lines[0]
