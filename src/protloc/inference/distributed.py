"""Distributed, resumable prediction in parts: ``protloc predict RUN ... --devices N --num-nodes M``
and ``--shard i/n``.

The input table is cut into **parts** of consecutive rows (``--part-rows``, default
:func:`default_part_rows`). Each part becomes one CSV next to ``--out``, named by its rows::

    submission.csv.parts/
      manifest.json                    what the parts were made with (run, models, thresholds,
                                       ids, TTA, merge, folds, part size): a rerun checks it
      rows-000000000-000009999.csv     Image, Label, one probability column per class
      rows-000010000-000019999.csv     ... written atomically when the part is done
      rows-000010000-000019999.skipped.csv   unreadable images of that part (--skip-bad)

**Work split.** Lightning's ``Trainer.predict`` runs the ranks (``--devices N --num-nodes M``,
or whatever torchrun/SLURM started; :mod:`protloc.cluster`); rank 0 lists the parts that are
not on disk yet and broadcasts the list, and rank ``r`` of ``W`` takes every ``W``-th of them. A
:class:`~lightning.pytorch.callbacks.BasePredictionWriter` hands each batch to a
:class:`PartSink`, which buffers one part and writes it when its last batch is done. Images are
decoded in the DataLoader workers (``--workers``); a rank holds one part and a few batches,
whatever the number of images. ``--shard i/n`` first narrows the parts to the ``i``-th of ``n``
equal blocks (job arrays on CPU clusters, e.g. on the ONNX engine); the shards share the parts
folder. **One process** (``--devices 1`` or a ``--shard`` task, no launcher around it) runs the
same batches through the same :class:`PartSink` without a Trainer (decoding in
:func:`protloc.data.workers.worker_map` processes): on the ONNX engine it never imports torch.

**Resume.** A killed prediction (``kill -9``, a preempted job) loses at most the part each rank
was on: a rerun of the same command skips the parts on disk. **Merge.** When every part is on
disk, the last process to finish (rank 0) concatenates them in row order, streaming, into
``--out`` (and ``--probs``); ``--merge-shards`` does only that. The merged files equal what
one process writes (input order, unreadable images left out).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.core.cpu import available_cores
from protloc.core.errors import InputError

__all__ = ["PartPlan", "default_part_rows", "parse_shard", "parts_dir", "predict_parts", "merge_parts",
           "PartsResult"]

_PART = re.compile(r"rows-(\d{9})-(\d{9})\.csv")


# --------------------------------------------------------------------------------------------
# the plan: parts of consecutive rows
# --------------------------------------------------------------------------------------------
def default_part_rows(n: int) -> int:
    """Rows per part: about 64 parts, between 256 and 10,000 rows each.

    Examples
    --------
    >>> default_part_rows(1_000), default_part_rows(200_000), default_part_rows(10_000_000)
    (256, 3125, 10000)
    """
    return int(min(10_000, max(256, -(-int(n) // 64))))


@dataclass(frozen=True)
class PartPlan:
    """``n`` rows in parts of ``part_rows`` (the last one shorter).

    Examples
    --------
    >>> p = PartPlan(25, 10)
    >>> p.n_parts, p.bounds(2), p.name(2), list(p.shard(1, 2))
    (3, (20, 25), 'rows-000000020-000000024.csv', [1, 2])
    """

    n: int
    part_rows: int

    @property
    def n_parts(self) -> int:
        return -(-self.n // self.part_rows)

    def bounds(self, p: int) -> tuple[int, int]:
        a = p * self.part_rows
        return a, min(self.n, a + self.part_rows)

    def name(self, p: int) -> str:
        a, b = self.bounds(p)
        return f"rows-{a:09d}-{b - 1:09d}.csv"

    def skipped_name(self, p: int) -> str:
        return self.name(p)[:-len(".csv")] + ".skipped.csv"

    def shard(self, i: int, n: int) -> range:
        """The parts of shard ``i`` of ``n``: the ``i``-th of ``n`` nearly equal blocks."""
        return range(i * self.n_parts // n, (i + 1) * self.n_parts // n)

    def shard_of(self, p: int, n: int) -> int:
        return next(i for i in range(n) if p in self.shard(i, n))


def parse_shard(text) -> tuple[int, int]:
    """``"i/n"`` (``0 <= i < n``) -> ``(i, n)``.

    Examples
    --------
    >>> parse_shard("3/10")
    (3, 10)
    >>> parse_shard("10/10")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --shard: expected i/n with 0 <= i < n (e.g. 0/10 ... 9/10), got '10/10'. Fix: number the shards from 0, e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-9.
    """
    m = re.fullmatch(r"\s*([0-9]{1,9})\s*/\s*([0-9]{1,9})\s*", str(text))
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise InputError("--shard", expected="i/n with 0 <= i < n (e.g. 0/10 ... 9/10)", got=repr(str(text)),
                         fix="number the shards from 0, e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT "
                             "with --array=0-9")
    return int(m.group(1)), int(m.group(2))


def parts_dir(out) -> Path:
    """The parts folder of an output file: ``submission.csv`` -> ``submission.csv.parts/``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _digest(items) -> str:
    h = hashlib.sha1()
    for s in items:
        h.update(str(s).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def _manifest(rf, table, *, part_rows: int, tta: str, merge: str, folds, at_least_one) -> dict:
    """What the parts depend on: a rerun with other values must not reuse them."""
    model_files = rf.model_paths() or ([rf.onnx_path] if rf.onnx_path.is_file() else [])
    rule = rf.thresholds()
    return {"version": 1, "run": str(rf.root.resolve()),
            "models": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in model_files],
            "thresholds": _digest([*np.round(np.asarray(rule.values, float), 9), rule.at_least_one]),
            "images": str(Path(table.images).resolve()), "n": len(table), "ids": _digest(table.ids),
            "part_rows": int(part_rows), "tta": tta, "merge": merge, "folds": folds,
            "at_least_one": at_least_one}


def check_manifest(folder: Path, want: dict) -> None:
    """Write ``manifest.json`` if the folder has none, else refuse parts made otherwise."""
    from protloc.core.atomic import write_json

    path = folder / "manifest.json"
    try:
        have = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        have = None
    if have is None:
        write_json(path, want)  # every rank may get here at once: same content, atomic
        return
    diff = [k for k in want if have.get(k) != want[k]]
    if diff:
        k = diff[0]
        raise InputError(f"{folder}: its parts were made with other settings ({', '.join(diff)}: "
                         f"{have.get(k)!r} there, {want[k]!r} now)",
                         fix=f"predict with the same run, data and options to resume, or delete {folder} "
                             "(or choose another --out) to start again")


# --------------------------------------------------------------------------------------------
# data: rows of the table decoded in DataLoader workers, batched inside parts
# --------------------------------------------------------------------------------------------
class _Rows:
    """``dataset.__getitems__(range(a, b))`` -> ``(a, b, ok rows, uint8 images, [(row, msg)], note)``."""

    def __init__(self, table, pre, *, channels_chosen: bool, pixel_size: float | None = None):
        self.table, self.pre, self.channels_chosen = table, pre, channels_chosen
        self.pixel_size = pixel_size  # --pixel-size: the input images' (overrides the files')
        self._note = None

    def __len__(self) -> int:
        return len(self.table)

    def _resized(self, message: str) -> None:
        self._note = self._note or message

    def __getitems__(self, rows):
        from protloc.inference.inputs import read_table_row

        pre = self.pre
        imgs = np.empty((len(rows), pre.size, pre.size, pre.in_chans), np.uint8)
        ok, errs = [], []
        for i in rows:
            try:
                imgs[len(ok)] = read_table_row(self.table, i, pre, channels_chosen=self.channels_chosen,
                                               on_resize=self._resized, pixel_size=self.pixel_size)
                ok.append(i)
            except InputError as e:  # returned as data: the main process raises or skips it
                errs.append((i, f"{self.table.where(i)}: {e}"))
        note, self._note = self._note, None
        return rows.start, rows.stop, np.asarray(ok, np.int64), imgs[:len(ok)], errs, note

    def __getitem__(self, i):  # pragma: no cover - the batch sampler always asks __getitems__
        return self.__getitems__(range(i, i + 1))


class _PartBatches:
    """Batches (``range`` objects: tiny to record) of at most ``batch_size`` rows inside each part."""

    def __init__(self, plan: PartPlan, parts, batch_size: int):
        self.plan, self.parts, self.bs = plan, list(parts), int(batch_size)

    def __iter__(self):
        for p in self.parts:
            a, b = self.plan.bounds(p)
            for s in range(a, b, self.bs):
                yield range(s, min(b, s + self.bs))

    def __len__(self) -> int:
        return sum(-(-(b - a) // self.bs) for a, b in map(self.plan.bounds, self.parts))


class _Batches:
    """The DataLoader behind a plain iterable, so Lightning does not re-create it around an index
    recorder that keeps every batch's row list for the whole run (RAM would grow with the data)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _unbatched(batch):
    return batch



# --------------------------------------------------------------------------------------------
# one batch, one part
# --------------------------------------------------------------------------------------------
_NOTED: set = set()


def predict_batch(predictor, batch, *, tta: str, merge: str, at_least_one, on_error: str):
    """A decoded batch of :class:`_Rows` -> ``(start, stop, ok rows, probs, label strings, errors)``
    with the predictor's public methods; an unreadable image raises unless ``on_error='skip'``."""
    start, stop, ok, imgs, errs, note = batch
    if note and "resize" not in _NOTED:
        _NOTED.add("resize")
        warnings.warn(f"{note} (shown once)", UserWarning, stacklevel=2)
    if errs and on_error == "raise":
        raise InputError(errs[0][1], fix="check --images and the ids, or pass --skip-bad")
    probs = predictor.predict_array(imgs, tta=tta, merge=merge, batch_size=max(1, len(imgs))) \
        if len(imgs) else np.zeros((0, len(predictor.classes)), np.float32)
    _, labels = predictor.labels_from_probs(probs, at_least_one=at_least_one)
    return start, stop, ok, probs, labels, errs


class PartSink:
    """Collects the predicted batches of one part (they arrive in row order and never straddle
    parts) and writes the part when its last batch is in: the skipped list first, then
    ``rows-A-B.csv`` (Image, Label, probabilities ``%.6f``), each atomically."""

    def __init__(self, plan: PartPlan, folder: Path, ids, classes, *, say):
        self.plan, self.folder, self.ids, self.classes, self.say = plan, folder, ids, list(classes), say
        self.part, self.seen, self.buf, self.errs = None, 0, [], []
        self.written, self.images, self.t0, self.who = 0, 0, time.time(), ""

    def start(self, who: str) -> None:
        self.who, self.t0 = who, time.time()

    def add(self, start, stop, ok, probs, labels, errs) -> None:
        p = start // self.plan.part_rows
        if self.part is not None and p != self.part:  # pragma: no cover - batches never straddle parts
            raise RuntimeError(f"part {self.part} unfinished when rows {start}-{stop} arrived")
        self.part = p
        self.seen += stop - start
        self.buf.append((ok, probs, labels))
        self.errs.extend(errs)
        a, b = self.plan.bounds(p)
        if self.seen == b - a:
            self._flush(p)

    def _flush(self, p: int) -> None:
        from protloc.core.atomic import write_rows

        if self.errs:  # the skipped list first: a part on disk is complete with it
            write_rows(self.folder / self.plan.skipped_name(p), ["Image", "message"],
                       ((self.ids[i], msg) for i, msg in self.errs))
        write_rows(self.folder / self.plan.name(p), ["Image", "Label", *self.classes],
                   ([self.ids[i], lab, *(f"{v:.6f}" for v in row)]
                    for ok, probs, labels in self.buf for i, lab, row in zip(ok, labels, probs)))
        a, b = self.plan.bounds(p)
        self.written += 1
        self.images += b - a
        rate = self.images / max(time.time() - self.t0, 1e-9)
        self.say(f"{self.who}: part rows {a}-{b - 1} done ({self.written} parts, {rate:.0f} images/s)")
        self.part, self.seen, self.buf, self.errs = None, 0, [], []

    def close(self) -> None:
        if self.buf:  # pragma: no cover - every part ends with its last batch
            raise RuntimeError("unfinished part at the end of prediction")


# --------------------------------------------------------------------------------------------
# one process, no Lightning: --devices 1 and --shard job-array tasks (torch-free on the onnx engine)
# --------------------------------------------------------------------------------------------
_ROWS = None  # the dataset the decode worker processes inherit (fork): jobs are tiny row ranges


def _decode(rows):
    return _ROWS.__getitems__(rows)


def _predict_local(run_root, table, pre, plan, todo, sink: PartSink, kw, *, tta, merge, batch_size, at_least_one,
                   on_error, channels_chosen, workers) -> None:
    """The parts ``todo`` in this process: decoding in ``workers`` processes (1: here), in order."""
    global _ROWS
    from protloc.data.workers import worker_map
    from protloc.inference.predictor import Predictor

    predictor = Predictor.from_run(run_root, **kw)
    _ROWS = _Rows(table, pre, channels_chosen=channels_chosen, pixel_size=kw.get("pixel_size"))
    w = max(1, min(4, available_cores() // 2)) if workers < 0 else int(workers)
    sink.start("rank 0")
    try:
        for batch in worker_map(_decode, _PartBatches(plan, todo, batch_size), w):
            sink.add(*predict_batch(predictor, batch, tta=tta, merge=merge, at_least_one=at_least_one,
                                    on_error=on_error))
        sink.close()
    finally:
        _ROWS = None


# --------------------------------------------------------------------------------------------
# Lightning pieces
# --------------------------------------------------------------------------------------------
def _lightning_parts():
    """The LightningModule, DataModule and prediction writer (Lightning imported on demand)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import BasePredictionWriter

    class PartsModule(pl.LightningModule):
        """Wraps a :class:`~protloc.inference.predictor.Predictor` built on each rank's device."""

        def __init__(self, run_root, predictor_kw: dict, *, tta: str, merge: str, at_least_one, on_error: str):
            super().__init__()
            self.run_root, self.predictor_kw = run_root, dict(predictor_kw)
            self.tta, self.merge_how, self.at_least_one, self.on_error = tta, merge, at_least_one, on_error
            self.predictor = None

        def setup(self, stage):
            from protloc.inference.predictor import Predictor

            kw = dict(self.predictor_kw)
            dev = self.trainer.strategy.root_device
            kw["device"] = str(dev)
            if not kw.get("threads") and dev.type == "cpu":  # share the node's cores among its ranks
                kw["threads"] = max(1, available_cores() // max(1, self.trainer.num_devices))
            self.predictor = Predictor.from_run(self.run_root, **kw)

        def predict_step(self, batch, batch_idx):
            return predict_batch(self.predictor, batch, tta=self.tta, merge=self.merge_how,
                                 at_least_one=self.at_least_one, on_error=self.on_error)

    class PartsData(pl.LightningDataModule):
        """Rank 0 lists the parts not on disk and broadcasts them; rank r takes every W-th."""

        def __init__(self, table, pre, plan: PartPlan, parts, folder: Path, *, batch_size: int, workers: int,
                     channels_chosen: bool, pixel_size: float | None = None):
            super().__init__()
            self.table, self.pre, self.plan, self.parts, self.folder = table, pre, plan, list(parts), folder
            self.pixel_size = pixel_size
            self.batch_size, self.workers, self.channels_chosen = batch_size, workers, channels_chosen
            self.todo: list[int] = []
            self.mine: list[int] = []

        def setup(self, stage):
            t = self.trainer
            todo = [p for p in self.parts if not (self.folder / self.plan.name(p)).is_file()] \
                if t.is_global_zero else None
            self.todo = list(t.strategy.broadcast(todo, src=0))
            self.mine = self.todo[t.global_rank::t.world_size]

        def predict_dataloader(self):
            from torch.utils.data import DataLoader

            w = int(self.workers)
            if w < 0:  # auto: one decoder per two cores of this rank, at most 4
                w = max(1, min(4, available_cores() // max(1, self.trainer.num_devices) // 2))
            # workers start from a forkserver, not by fork: a rank has thread pools (onnxruntime,
            # torch, gloo) by now, and a worker forked while one of their locks was held waited on
            # it forever (a 2-rank test hung: the worker single-threaded in futex_wait)
            loader = DataLoader(_Rows(self.table, self.pre, channels_chosen=self.channels_chosen,
                                      pixel_size=self.pixel_size),
                                batch_sampler=_PartBatches(self.plan, self.mine, self.batch_size),
                                collate_fn=_unbatched, num_workers=w, prefetch_factor=2 if w else None,
                                multiprocessing_context="forkserver" if w else None)
            return _Batches(loader)

    class PartWriter(BasePredictionWriter):
        """Hands every batch to a :class:`PartSink` (one part buffered, written after its last batch)."""

        def __init__(self, sink: "PartSink"):
            super().__init__(write_interval="batch")
            self.sink = sink

        def on_predict_start(self, trainer, pl_module):
            self.sink.start(f"rank {trainer.global_rank}")

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                               dataloader_idx):
            self.sink.add(*prediction)

        def on_predict_end(self, trainer, pl_module):
            self.sink.close()
            trainer.strategy.barrier("protloc-parts-written")  # all parts on disk before rank 0 merges

    return PartsModule, PartsData, PartWriter


# --------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------
@dataclass
class PartsResult:
    """What :func:`predict_parts` / :func:`merge_parts` did.

    ``main``: this process is global rank 0 (it reports); ``merged``: ``--out`` was written;
    ``missing``: parts not on disk yet (other shards); ``skipped``: ``(id, message)`` of
    unreadable images; ``done_before``: parts found on disk at the start.
    """

    main: bool = True
    merged: bool = False
    n_parts: int = 0
    missing: list = None
    n_images: int = 0
    n_empty: int = 0
    skipped: list = None
    done_before: int = 0
    predicted: int = 0
    seconds: float = 0.0
    note: str = ""


@contextlib.contextmanager
def _merge_lock(folder: Path):
    """An exclusive, non-blocking lock: yields False when another process is merging."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock (the writes are atomic anyway)
        yield True
        return
    with open(folder / ".merge.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def missing_parts(plan: PartPlan, folder: Path, parts=None) -> list[int]:
    return [p for p in (range(plan.n_parts) if parts is None else parts) if not (folder / plan.name(p)).is_file()]


def merge_parts(plan: PartPlan, folder: Path, out, *, probs_out=None, n_shards: int | None = None) -> PartsResult:
    """Concatenate every part of ``folder`` in row order into ``out`` (``Image,Label``) and
    ``probs_out`` (``Image`` + classes), streaming (RAM flat), atomically (probabilities first).

    Raises InputError naming the missing parts (and their shards) when some are not on disk.
    """
    from protloc.core.atomic import atomic_path

    res = PartsResult(n_parts=plan.n_parts, skipped=[], missing=[])
    missing = missing_parts(plan, folder)
    if missing:
        a, b = plan.bounds(missing[0])
        shards = sorted({plan.shard_of(p, n_shards) for p in missing}) if n_shards else []
        where = f" (shards {', '.join(map(str, shards[:10]))}{' ...' if len(shards) > 10 else ''} of {n_shards})" \
            if shards else ""
        raise InputError(f"{folder}: {len(missing)} of {plan.n_parts} parts are not done yet, e.g. rows {a}-{b - 1}"
                         f"{where}", fix="run the missing shards or ranks with the same options (a rerun skips the "
                                         "finished parts), then merge again")
    with _merge_lock(folder) as mine:
        if not mine:
            res.note = f"another process is merging {folder}; it writes {out}"
            return res
        with atomic_path(out) as t_sub, (atomic_path(probs_out) if probs_out else contextlib.nullcontext()) as t_p:
            with open(t_sub, "w", newline="", encoding="utf-8") as fs, \
                    (open(t_p, "w", newline="", encoding="utf-8") if t_p else contextlib.nullcontext()) as fp:
                ws = csv.writer(fs, lineterminator="\n")
                wp = csv.writer(fp, lineterminator="\n") if fp else None
                for p in range(plan.n_parts):
                    skipped = folder / plan.skipped_name(p)
                    if skipped.is_file():
                        with open(skipped, newline="", encoding="utf-8") as f:
                            res.skipped.extend(tuple(r) for r in list(csv.reader(f))[1:])
                    with open(folder / plan.name(p), newline="", encoding="utf-8") as f:
                        r = csv.reader(f)
                        header = next(r)
                        if p == 0:
                            ws.writerow(header[:2])
                            if wp:
                                wp.writerow([header[0], *header[2:]])
                        for row in r:
                            ws.writerow(row[:2])
                            if wp:
                                wp.writerow([row[0], *row[2:]])
                            res.n_images += 1
                            res.n_empty += not row[1]
            if res.n_images == 0:
                raise InputError(f"none of the {plan.n} images could be read ({len(res.skipped)} skipped)",
                                 fix="check --images, --format and the files")
    res.merged = True
    return res


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------
def predict_parts(run_root, table, out, *, probs_out=None, predictor_kw: dict | None = None, tta: str = "none",
                  merge: str = "mean", batch_size: int = 64, at_least_one: bool | None = None,
                  on_error: str = "raise", channels_chosen: bool = True, devices=1, num_nodes: int = 1,
                  accelerator: str = "auto", shard: tuple[int, int] | None = None, part_rows: int | None = None,
                  workers: int = -1, merge_only: bool = False, progress: bool = True, say=None) -> PartsResult:
    """Predict ``table`` with the run at ``run_root`` in parts (module docstring); merge when complete.

    ``predictor_kw`` goes to :meth:`Predictor.from_run` on every rank (its ``device`` is the
    rank's device); ``devices``/``num_nodes``/``accelerator`` go to Lightning's Trainer;
    ``shard=(i, n)`` predicts only shard ``i`` of ``n``; ``workers`` decoding processes per rank
    (-1: auto); ``merge_only``: only merge the parts on disk (``--merge-shards``).
    Returns a :class:`PartsResult` (``main`` is False on ranks other than 0, which report nothing).
    """
    from protloc.core.errors import check_choice
    from protloc.core.runfolder import RunFolder
    from protloc.core.tta import MERGES, TTA_MODES
    from protloc.inference.inputs import check_table

    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    check_choice("tta", tta, TTA_MODES)
    check_choice("merge", merge, MERGES)
    check_choice("on_error", on_error, ("raise", "skip"))
    kw = dict(predictor_kw or {})
    rf = RunFolder(run_root).check(need_models=kw.get("engine", "torch") == "torch")
    pre = rf.preprocessing().with_reading(z=kw.get("z"), axes=kw.get("axes"))  # --z / --axes
    check_table(table, pre)
    folder = parts_dir(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: the parts folder of --out is a file", fix="move it away or choose another --out")
    try:
        prior = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
    except (OSError, ValueError):
        prior = {}
    rows = int(part_rows or (prior.get("part_rows") if prior.get("n") == len(table) else 0) or
               default_part_rows(len(table)))
    plan = PartPlan(len(table), rows)
    n_shards = shard[1] if shard else None
    parts = plan.shard(*shard) if shard else range(plan.n_parts)
    sink = PartSink(plan, folder, table.ids, pre.classes, say=say if progress else (lambda m: None))
    local = merge_only or _one_process(devices, num_nodes)
    job = None if local else _trainer(run_root, table, pre, plan, parts, folder, kw, sink, tta=tta, merge=merge,
                                      batch_size=batch_size, at_least_one=at_least_one, on_error=on_error,
                                      channels_chosen=channels_chosen, devices=devices, num_nodes=num_nodes,
                                      accelerator=accelerator, workers=workers)
    folder.mkdir(parents=True, exist_ok=True)  # the first file written: every option is checked by now
    check_manifest(folder, _manifest(rf, table, part_rows=rows, tta=tta, merge=merge, folds=kw.get("folds"),
                                     at_least_one=at_least_one))
    if merge_only:
        return merge_parts(plan, folder, out, probs_out=probs_out, n_shards=n_shards)
    res = PartsResult(n_parts=plan.n_parts)
    todo = missing_parts(plan, folder, parts)
    res.done_before = len(parts) - len(todo)
    t0 = time.time()
    if todo and local:
        _predict_local(run_root, table, pre, plan, todo, sink, kw, tta=tta, merge=merge, batch_size=batch_size,
                       at_least_one=at_least_one, on_error=on_error, channels_chosen=channels_chosen,
                       workers=workers)
    elif todo:
        trainer, module, data = job
        trainer.predict(module, datamodule=data, return_predictions=False)
        if not trainer.is_global_zero:
            return PartsResult(main=False)
    res.predicted = len(todo)
    res.seconds = time.time() - t0
    res.missing = missing_parts(plan, folder)
    if res.missing:
        return res  # other shards still running: the last one merges
    merged = merge_parts(plan, folder, out, probs_out=probs_out, n_shards=n_shards)
    merged.done_before, merged.predicted, merged.seconds, merged.missing = (res.done_before, res.predicted,
                                                                             res.seconds, [])
    return merged


def _one_process(devices, num_nodes) -> bool:
    """One process on one node, no launcher around it: the parts loop runs without a Trainer."""
    from protloc.cluster import parse_devices

    d = parse_devices(devices)
    world = max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "SLURM_NTASKS"))
    return int(num_nodes) == 1 and (d == 1 or (isinstance(d, list) and len(d) == 1)) and world == 1


def _trainer(run_root, table, pre, plan, parts, folder, kw, sink, *, tta, merge, batch_size, at_least_one, on_error,
             channels_chosen, devices, num_nodes, accelerator, workers):
    """``(trainer, module, datamodule)`` for ``Trainer.predict`` over the missing ``parts``;
    Lightning's complaint about the hardware options becomes an InputError."""
    import logging

    import lightning.pytorch as pl

    from protloc.cluster import parse_devices

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Couldn't infer the batch indices.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    PartsModule, PartsData, PartWriter = _lightning_parts()
    d = parse_devices(devices)
    try:
        trainer = pl.Trainer(accelerator=accelerator, devices=d, num_nodes=int(num_nodes),
                             strategy="ddp", logger=False, enable_checkpointing=False,
                             enable_model_summary=False, enable_progress_bar=False, use_distributed_sampler=False,
                             callbacks=[PartWriter(sink)])
    except Exception as e:  # noqa: BLE001 - Lightning raises ValueError, RuntimeError, MisconfigurationException...
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--devices {devices} --num-nodes {num_nodes} (accelerator {accelerator}): Lightning "
                         f"refuses them on this machine: {why}",
                         fix="pick devices this machine (or launcher) has, e.g. --devices 1, or --device cpu") from None
    module = PartsModule(run_root, kw, tta=tta, merge=merge, at_least_one=at_least_one, on_error=on_error)
    data = PartsData(table, pre, plan, parts, folder, batch_size=batch_size, workers=workers,
                     channels_chosen=channels_chosen, pixel_size=kw.get("pixel_size"))
    return trainer, module, data
