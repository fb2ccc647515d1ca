"""The hostile-user corpus of issue 15: every bad invocation ends in exactly one ``error:`` line,
exit code 2, no traceback, and creates nothing (no output file, no half-made run folder).

Each case names the cause it covers (the 15 causes of the 32 tracebacks, the silent changes, the
nonsense that was accepted and the misleading messages of the issue) and pins the message. All
cases share one small world (a tiny dataset, a fake run folder and damaged copies of it) that no
case may change: the whole world is compared before and after every call.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from protloc.cli.main import main

from helpers import make_fake_run, make_tiny_dataset

SUP2, ARABIC3 = "\u00b2", "\u0663"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Paths of the shared world (see the module docstring); read-only for the cases."""
    root = tmp_path_factory.mktemp("hostile")
    csv, images = make_tiny_dataset(root / "data", n=8, size=16)
    run = make_fake_run(root / "run", n=8, size=16)
    w = {"root": root, "csv": csv, "images": images, "run": run}
    rows = csv.read_text().splitlines()

    def labels(name, row2_label, *, header="Image,Label", extra_rows=()):
        p = root / f"{name}.csv"
        first = rows[1].split(",")[0]
        p.write_text("\n".join([header, f"{first},{row2_label}", *rows[2:], *extra_rows]) + "\n")
        w[name] = p

    labels("sup2", f"1 {SUP2}")
    labels("digits5000", "9" * 5000)
    labels("arabic", ARABIC3)
    labels("ragged_truth", "1,4")  # '34150,1,4': the label is '1 4'? '1'? -- refused, never guessed
    for name, iid in (("up", "../outside"), ("sub", "a/b"), ("abs", "/etc/hostname")):
        p = root / f"id_{name}.csv"
        p.write_text(f"Image,Label\n{iid},1\n" + "\n".join(rows[2:]) + "\n")
        w[f"id_{name}"] = p
    pred = root / "pred.csv"
    pred.write_text("Image,Predicted\n" + "\n".join(r.split(",")[0] + ",1" for r in rows[1:]) + "\n")
    w["pred"] = pred
    (root / "empty.csv").write_bytes(b"")
    (root / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (root / "ragged.csv").write_text("Image,Predicted\n" + rows[1].split(",")[0] + ",1,4,5\n")
    (root / "afile").write_text("not a folder\n")
    (root / "weights.txt").write_text("these are not weights\n")
    (root / "pipe.csv").unlink(missing_ok=True)
    os.mkfifo(root / "pipe.csv")  # reading a FIFO with no writer used to block forever
    odd = root / "odd_images"
    shutil.copytree(images, odd)
    first = rows[1].split(",")[0]
    (odd / f"{first}.png").unlink()
    (odd / f"{first}.png").mkdir()  # a folder named like the image
    w["odd_images"] = odd

    def damaged(name, fn):
        d = root / name
        shutil.copytree(run, d)
        fn(d)
        w[name] = d

    damaged("run_thr_list", lambda d: (d / "thresholds.json").write_text("[0.5, 0.5, 0.5]"))
    damaged("run_text_model", lambda d: (d / "models" / "fold0.pt").write_text("hello, I am not a model\n"))
    damaged("run_empty_oof", lambda d: (d / "oof.csv").write_bytes(b""))
    return w


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0)
            for p in root.rglob("*") if not p.is_fifo()}


TRAIN = ["train", "--csv", "{csv}", "--images", "{images}", "--out", "{root}/new_run", "--model", "test_resnet",
         "--pretrained", "none", "--size", "16", "--epochs", "1", "--quiet"]
PREDICT = ["predict", "{run}", "--images", "{images}", "--out", "{root}/sub.csv"]

#: (cause of issue 15, argv, the message it must print)
CASES = [
    # -- the 15 causes of the 32 tracebacks -----------------------------------------------------
    ("1 label with a Unicode digit (validate)", ["validate", "--csv", "{sup2}", "--images", "{images}",
     "--no-near-dup"], f"sup2.csv line 2 (id 1000): expected class ids 0-9 in ASCII digits, got '{SUP2}'"),
    ("1 label with a Unicode digit (split)", ["split", "--csv", "{sup2}", "--images", "{images}", "--no-near-dup",
     "--folds", "2", "--out", "{root}/s.csv"], "expected class ids 0-9 in ASCII digits"),
    ("1 label with a Unicode digit (train)", [*TRAIN[:2], "{sup2}", *TRAIN[3:]], "expected class ids 0-9 in ASCII"),
    ("1 label with a Unicode digit (score --truth)", ["score", "--truth", "{sup2}", "--pred", "{pred}"],
     "sup2.csv line 2 (id 1000): expected class ids 0-9 in ASCII digits"),
    ("2 label with 5,000 digits (validate)", ["validate", "--csv", "{digits5000}", "--images", "{images}",
     "--no-near-dup"], "line 2 (id 1000): expected class ids 0-9, got a 5000-digit number"),
    ("2 label with 5,000 digits (train)", [*TRAIN[:2], "{digits5000}", *TRAIN[3:]], "got a 5000-digit number"),
    ("2 label with 5,000 digits (score --pred)", ["score", "--truth", "{csv}", "--pred", "{digits5000}"],
     "digits5000.csv line 2 (id 1000): expected class ids 0-9, got a 5000-digit number"),
    ("3 thresholds.json is a JSON list (predict)", [*PREDICT[:1], "{run_thr_list}", *PREDICT[2:]],
     "thresholds.json: expected a JSON object with a 'thresholds' list, got a JSON list"),
    ("3 thresholds.json is a JSON list (serve)", ["serve", "{run_thr_list}", "--port", "8765"],
     "thresholds.json: expected a JSON object with a 'thresholds' list"),
    ("4 text file as models/fold0.pt (predict)", [*PREDICT[:1], "{run_text_model}", *PREDICT[2:]],
     "fold0.pt: corrupt or incompatible model file"),
    ("4 text file as models/fold0.pt (serve)", ["serve", "{run_text_model}", "--port", "8765"],
     "fold0.pt: corrupt or incompatible model file"),
    ("5 0-byte oof.csv (thresholds)", ["thresholds", "{run_empty_oof}"],
     "oof.csv: the out-of-fold probability CSV is empty. Fix: rebuild it"),
    ("5 0-byte oof.csv (report)", ["report", "{run_empty_oof}", "--out", "{root}/r.html"],
     "oof.csv: the out-of-fold probability CSV is empty"),
    ("6 --device bogus (predict)", [*PREDICT, "--device", "bogus"],
     "--device: expected cpu, cuda, cuda:N or mps, got 'bogus'"),
    ("6 --device bogus (explain)", ["explain", "{run}", "{images}/1000.png", "--out", "{root}/e.png", "--device",
     "bogus"], "--device: expected cpu, cuda, cuda:N or mps"),
    ("6 --device bogus (report)", ["report", "{run}", "--out", "{root}/r.html", "--device", "bogus"],
     "--device: expected cpu, cuda, cuda:N or mps"),
    ("6 --device cuda without a GPU (predict)", [*PREDICT, "--device", "cuda"],
     "--device: expected cpu (no CUDA GPU is visible on this machine), got 'cuda'"),
    ("7 --threads -1 (predict)", [*PREDICT, "--threads", "-1"], "--threads: expected an integer >= 1, got -1"),
    ("7 --threads -1 (serve)", ["serve", "{run}", "--threads", "-1"], "--threads: expected an integer >= 0, got -1"),
    ("8 --out below an existing file (predict)", [*PREDICT[:4], "--out", "{root}/afile/sub.csv"],
     "--out: expected a path whose folders are folders, got {root}/afile/sub.csv ({root}/afile is a file)"),
    ("8 --out below an existing file (train)", [*TRAIN[:5], "--out", "{root}/afile/run", *TRAIN[7:]],
     "({root}/afile is a file). Fix: choose an output path that is not below {root}/afile."),
    ("8 --out below an existing file (split)", ["split", "--csv", "{csv}", "--images", "{images}", "--out",
     "{root}/afile/s.csv"], "--out: expected a path whose folders are folders"),
    ("8 --out below an existing file (explore)", ["explore", "--csv", "{csv}", "--images", "{images}", "--out",
     "{root}/afile/e.html"], "--out: expected a path whose folders are folders"),
    ("8 --json below an existing file (score)", ["score", "--truth", "{csv}", "--pred", "{pred}", "--json",
     "{root}/afile/s.json"], "--json: expected a path whose folders are folders"),
    ("8 --onnx below an existing file (export)", ["export", "{run}", "--onnx", "{root}/afile/m.onnx"],
     "--onnx: expected a path whose folders are folders"),
    ("8 OUT below an existing file (synth)", ["synth", "{root}/afile/synth", "--n-train", "4"],
     "OUT: expected a path whose folders are folders"),
    ("9 explain --folds a", ["explain", "{run}", "{images}/1000.png", "--folds", "a"],
     "--folds: expected comma-separated fold numbers, got 'a'"),
    ("10 export --opset 3", ["export", "{run}", "--onnx", "{root}/m.onnx", "--opset", "3"],
     "--opset: expected an ONNX opset 7 to "),
    ("11 score --pred empty", ["score", "--truth", "{csv}", "--pred", "{root}/empty.csv"],
     "empty.csv: the CSV is empty. Fix:"),
    ("11 score --pred binary", ["score", "--truth", "{csv}", "--pred", "{root}/binary.csv"],
     "binary.csv: a binary file (NUL bytes), not a text CSV"),
    ("11 score --pred ragged", ["score", "--truth", "{csv}", "--pred", "{root}/ragged.csv"],
     "ragged.csv line 2: expected 2 cells (Image,Predicted), got 4"),
    ("12 train --lr -1", [*TRAIN, "--lr", "-1"], "--lr: expected a number > 0, got -1.0"),
    ("12 train --dropout 2", [*TRAIN, "--dropout", "2"], "--dropout: expected a number in [0, 1), got 2.0"),
    ("12 train --workers -1", [*TRAIN, "--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
    ("13 train --accelerator bogus", [*TRAIN, "--accelerator", "bogus"],
     "--accelerator: expected auto, cpu, gpu, cuda, mps or tpu, got 'bogus'"),
    ("13 train --precision bogus", [*TRAIN, "--precision", "bogus"], "--precision: expected auto, 32-true"),
    ("13 train --strategy bogus", [*TRAIN, "--strategy", "bogus"],
     "--strategy: expected a Lightning strategy name, got 'bogus'"),
    ("14 train --devices abc", [*TRAIN, "--devices", "abc"],
     "--devices: expected a count (1, 2), auto, -1 (all) or GPU indices like 0,1, got 'abc'"),
    ("15 train --pretrained a text file", [*TRAIN[:10], "{root}/weights.txt", *TRAIN[11:]],
     "--pretrained: expected a weights file (a state dict saved by torch or safetensors), got {root}/weights.txt"),
    # -- silent changes ------------------------------------------------------------------------
    ("silent: score --truth row '34150,1,4' scored as '1'", ["score", "--truth", "{ragged_truth}", "--pred",
     "{pred}"], "ragged_truth.csv line 2: expected 2 cells (Image,Label), got 3"),
    ("silent: an Arabic-Indic digit counted as a class", ["validate", "--csv", "{arabic}", "--images", "{images}",
     "--no-near-dup"], f"expected class ids 0-9 in ASCII digits, got '{ARABIC3}'"),
    ("silent: id '../outside' read outside --images (predict)", [*PREDICT[:2], "--csv", "{id_up}",
     *PREDICT[2:]], "id_up.csv line 2: expected an image id (a file name inside --images), got '../outside'"),
    ("silent: id 'a/b' (train)", [*TRAIN[:2], "{id_sub}", *TRAIN[3:]], "got 'a/b' (a path)"),
    ("silent: absolute id (validate)", ["validate", "--csv", "{id_abs}", "--images", "{images}", "--no-near-dup"],
     "expected an image id (a file name inside --images), got '/etc/hostname' (a path)"),
    ("silent: explain --id ../x", ["explain", "{run}", "--images", "{images}", "--id", "../data/train/1000"],
     "--id: expected an image id (a file name inside --images)"),
    # -- nonsense accepted -----------------------------------------------------------------------
    ("nonsense: train --threshold 2", [*TRAIN, "--threshold", "2"], "--threshold: expected a number in [0, 1]"),
    ("nonsense: train --ema 2", [*TRAIN, "--ema", "2"], "--ema: expected a number in [0, 1), got 2.0"),
    ("nonsense: train --hidden -1", [*TRAIN, "--hidden", "-1"], "--hidden: expected an integer >= 0, got -1"),
    ("nonsense: train --max-minutes -5", [*TRAIN, "--max-minutes", "-5"], "--max-minutes: expected a number >= 0"),
    ("nonsense: train --patience -3", [*TRAIN, "--patience", "-3"], "--patience: expected an integer >= 0"),
    ("nonsense: train --lr nan", [*TRAIN, "--lr", "nan"], "--lr: expected a finite number"),
    ("nonsense: evaluate --threshold 2", ["evaluate", "{run}", "--csv", "{csv}", "--images", "{images}",
     "--threshold", "2"], "--threshold: expected a number in [0, 1], got 2"),
    ("nonsense: train --epochs with an Arabic-Indic digit", [*TRAIN, "--epochs", ARABIC3],
     f"--epochs: expected an integer, got '{ARABIC3}'"),
    # -- messages ------------------------------------------------------------------------------
    ("message: split --folds 1", ["split", "--csv", "{csv}", "--images", "{images}", "--folds", "1"],
     "--folds: expected 2 or more folds, got 1. Fix: use --holdout FRACTION"),
    ("message: a folder named 1000.png", ["validate", "--csv", "{csv}", "--images", "{odd_images}",
     "--no-near-dup"], "1000.png is a folder, not an image file"),
    ("message: a folder named 1000.png (cache)", ["cache", "--csv", "{csv}", "--images", "{odd_images}"],
     "1000.png is a folder, not an image file"),
    ("message: --images is a file", [*PREDICT[:2], "--images", "{csv}", *PREDICT[4:]],
     "--images: expected an existing image folder, got {csv} (a file)"),
    ("message: --csv is a named pipe", ["validate", "--csv", "{root}/pipe.csv", "--images", "{images}"],
     "--csv: expected a CSV file, got {root}/pipe.csv (a named pipe (FIFO))"),
    ("message: --out overwrites the input --csv", [*PREDICT[:2], "--csv", "{csv}", *PREDICT[2:4], "--out", "{csv}"],
     "--out: expected a new file (not the input --csv)"),
    ("message: --out and --probs the same file", [*PREDICT, "--probs", "{root}/sub.csv"],
     "--out and --probs: expected two different files"),
    ("message: unknown option", ["evaluate", "{run}", "--treshold", "0.5"],
     "unrecognized arguments: --treshold 0.5. Fix: did you mean --threshold?"),
    ("message: unknown choice", [*PREDICT, "--tta", "d8"], "--tta: expected one of none, flip, d4, got 'd8'"),
    ("web limits: serve --header-timeout 0", ["serve", "{run}", "--header-timeout", "0"],
     "--header-timeout: expected a number > 0, got 0"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cause,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_clean_error(world, monkeypatch, capsys, cause, argv, message):
    if "cuda without a GPU" in cause:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    import uvicorn

    def no_server(*a, **k):
        raise AssertionError("the server started: the bad input was not refused")

    monkeypatch.setattr(uvicorn, "run", no_server)
    monkeypatch.setattr("protloc.cli.commands.serve._check_address", lambda host, port: None)  # port may be taken
    monkeypatch.chdir(world["root"])  # default outputs (splits.csv, <id>_explain.png) land in the world
    fill = {k: str(v) for k, v in world.items()}
    argv = [a.format(**fill) for a in argv]
    before = _snapshot(world["root"])
    rc = main(argv)
    out, err = capsys.readouterr()
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in out + err
    assert rc == 2, (rc, err)
    assert len(errors) == 1, err
    assert message.format(**fill) in errors[0], errors[0]
    assert "Fix:" in errors[0]
    assert _snapshot(world["root"]) == before, "a bad invocation created or changed files"


def test_the_world_is_usable(world, tmp_path, capsys):
    """The cases fail for their bad part only: the same calls with good values work."""
    assert main(["score", "--truth", str(world["csv"]), "--pred", str(world["pred"])]) == 0
    assert main(["validate", "--csv", str(world["csv"]), "--images", str(world["images"]), "--no-near-dup",
                 "--json", str(tmp_path / "new" / "v.json")]) == 0
    assert main(["split", "--csv", str(world["csv"]), "--images", str(world["images"]), "--no-near-dup",
                 "--folds", "2", "--out", str(tmp_path / "s.csv")]) == 0
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    assert main(["thresholds", str(run), "--n-bootstrap", "0"]) == 0
    capsys.readouterr()


def test_exit_code_of_help_and_no_command(capsys):
    assert main(["--help"]) == 0 and main([]) == 0 and main(["predict", "--help"]) == 0
    capsys.readouterr()


if sys.platform == "win32":  # pragma: no cover - mkfifo
    pytestmark = pytest.mark.skip("POSIX only")
