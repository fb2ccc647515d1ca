"""``protloc train``: decode once, split, train fold models with Lightning, write the run folder.

Per fold ``k`` the trainer writes ``checkpoints/fold{k}/{best,last}.ckpt``, ``models/fold{k}.pt``
and ``folds/fold{k}/{oof.csv,metrics.csv,summary.json}``; :func:`merge_folds` then combines
every finished fold into ``oof.csv``, ``metrics.csv`` and ``summary.json``. Folds trained on
different machines (``--fold k``) are merged by copying their run folders together and running
``protloc train --out RUN --merge`` (or automatically when a later fold finishes).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from protloc.core.atomic import write_csv, write_json
from protloc.core.config import TrainConfig
from protloc.core.errors import InputError, RunFolderError
from protloc.core.runfolder import DataSource, RunFolder

log = logging.getLogger("protloc.training.train")


def is_main_process() -> bool:
    """True on the process that writes files (global rank 0) under every launcher (Lightning's,
    torchrun, SLURM...), also before Lightning launches ranks (:func:`protloc.cluster.is_main_process`)."""
    from protloc.cluster import is_main_process as main

    return main()


def setup_logging(run: RunFolder, *, echo: bool = True) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if not is_main_process():
        log.addHandler(logging.NullHandler())
        return
    run.root.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run.log, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    if echo:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    log.propagate = False


def assign_folds(table, cfg: TrainConfig, usable: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Validation fold per image (-1 = train only, -2 = unusable), multilabel-stratified with
    near-duplicates kept together (:func:`protloc.data.split.make_folds`)."""
    from protloc.data.split import make_folds

    holdout = cfg.val_fraction if cfg.folds == 1 else None
    out = np.full(len(table), -2, dtype=int)
    out[usable] = make_folds(table.subset(usable), cfg.folds, seed=cfg.seed, holdout=holdout,
                             near_dup=cfg.near_dup, progress=progress)
    return out


def load_data(table, cfg: TrainConfig, *, progress: bool, reading=None, trust: bool | None = None):
    """Decoded images (the sharded cache store, read by index) and the usable rows.

    Bad images refuse training unless skip_bad. The store's location and trust come from
    ``--cache-dir`` / ``--trust-cache`` (``PROTLOC_CACHE_DIR`` / ``PROTLOC_TRUST_CACHE``);
    ``trust=True``: rank 0 has just checked the store (the other ranks do not stat every file).
    ``reading``: the run's :class:`~protloc.core.preprocessing.Reading` (intensity rule, Z
    projection, pixel size); ``cfg.pixel_size`` overrides the files' pixel size.
    """
    from protloc.data.cache import load_cached

    try:
        ds = load_cached(table, size=cfg.size, workers=cfg.workers or None, progress=progress,
                         skip_bad=cfg.skip_bad, trust=trust, reading=reading, pixel_size=cfg.pixel_size or None)
    except InputError as e:
        raise InputError(f"{e} (or pass --skip-bad to leave unreadable images out of training)") from None
    log.info("decoded images: %s (%d x %s)", ds.path, len(ds.images), "x".join(map(str, ds.images.shape[1:])))
    usable = np.setdiff1d(np.arange(len(table)), np.asarray(ds.bad, dtype=int))
    for i, msg in zip(ds.bad, ds.bad_messages):
        log.warning("skipping unreadable image %s: %s", table.where(i), msg)
    if len(usable) < 4:
        raise InputError("training data", expected="at least 4 readable labeled images",
                         got=str(len(usable)), fix="add images or fix the unreadable ones")
    return ds, usable


def load_unlabeled(cfg: TrainConfig, table, *, progress: bool, reading=None):
    """Decoded ``--unlabeled`` images (same format, channels and reading as the training table)."""
    from protloc.data.cache import load_cached
    from protloc.data.table import load_table

    unl = load_table(None, cfg.unlabeled, fmt=table.fmt, channels=table.channels, schema=table.schema, labels=False)
    ds = load_cached(unl, size=cfg.size, workers=cfg.workers or None, progress=progress, skip_bad=True,
                     reading=reading, pixel_size=cfg.pixel_size or None)
    keep = np.setdiff1d(np.arange(len(unl)), np.asarray(ds.bad, dtype=int))
    if ds.bad:
        log.warning("--unlabeled: %d unreadable images left out", len(ds.bad))
    log.info("unlabeled images for pseudo-labelling: %s (%d)", cfg.unlabeled, len(keep))
    return ds.images if len(keep) == len(unl) else np.asarray(ds.images[keep])


def _devices(spec: str):
    from protloc.cluster import parse_devices

    return parse_devices(spec)


def _precision(cfg: TrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def trainer_hardware(cfg: TrainConfig) -> dict:
    """The Lightning Trainer arguments that choose the hardware (accelerator, devices, strategy,
    num_nodes, precision): what :func:`train_fold` passes and what ``check_recipe`` tries first."""
    strategy = cfg.strategy
    if strategy == "ddp" and cfg.freeze_epochs > 0:  # head-only epochs leave backbone grads unused
        strategy = "ddp_find_unused_parameters_true"
    return dict(accelerator=cfg.accelerator, devices=_devices(cfg.devices), strategy=strategy,
                num_nodes=cfg.num_nodes, precision=_precision(cfg))


def set_threads(cfg: TrainConfig) -> int:
    """torch intra-op threads per process: ``--threads``, else the free cores / processes
    (:func:`protloc.core.cpu.free_cores`: more threads than free cores is many times slower)."""
    from protloc.core.cpu import free_cores

    d = _devices(cfg.devices)
    procs = d if isinstance(d, int) and d > 0 and not torch.cuda.is_available() else 1
    n = cfg.threads or max(1, free_cores() // procs)
    torch.set_num_threads(n)
    return n


def max_epochs(cfg: TrainConfig) -> int:
    """The most epochs of a fold: ``--epochs``, or for ``--epochs 0`` (auto) as many as the time
    budget allows (up to :data:`protloc.training.budget.AUTO_MAX_EPOCHS`; the budget planner picks
    how many) or :data:`AUTO_EPOCHS` without a budget."""
    from protloc.training.budget import AUTO_MAX_EPOCHS

    if cfg.epochs:
        return int(cfg.epochs)
    return AUTO_MAX_EPOCHS if cfg.max_minutes else AUTO_EPOCHS


#: epochs of ``--epochs 0`` (auto) without a time budget
AUTO_EPOCHS = 15

#: ``--size 0`` (auto): the model sees AUTO_SIZE px, or UPSAMPLED_SIZE when the training images'
#: median nucleus covers fewer than SMALL_NUCLEUS_PX pixels at AUTO_SIZE (low magnification: the
#: small structures are a pixel or two, and upsampling gives them more). Chosen on the selection
#: styles only (docs/training.md, "Upsampling small cells"): 160 px won on the low-magnification
#: selection style `hcs-confocal-20x` (median nucleus 41.5 px by this rule's own measure) and not
#: on `default` (77 px); the cut-off is their geometric mean (56.5).
AUTO_SIZE, UPSAMPLED_SIZE, SMALL_NUCLEUS_PX = 128, 160, 56.0


def resolve_size(cfg: TrainConfig, table, *, reading=None) -> tuple[int, str]:
    """The image side a run trains at, and why: ``--size`` when given, else (``--size 0``) the
    rule of :data:`SMALL_NUCLEUS_PX` on the training images' nuclei
    (:func:`protloc.data.reading.nucleus_scale`)."""
    from protloc.data.reading import nucleus_scale

    if cfg.size:
        return int(cfg.size), f"{cfg.size} px (--size)"
    area = nucleus_scale(table, size=AUTO_SIZE, reading=reading, pixel_size=cfg.pixel_size or None)
    if area is None:
        return AUTO_SIZE, f"{AUTO_SIZE} px (--size auto: no nuclei found in the nucleus channel)"
    if area < SMALL_NUCLEUS_PX:
        return UPSAMPLED_SIZE, (f"{UPSAMPLED_SIZE} px (--size auto: median nucleus {area:.0f} px at {AUTO_SIZE} px, "
                                f"under {SMALL_NUCLEUS_PX:g}: small cells, upsampled)")
    return AUTO_SIZE, f"{AUTO_SIZE} px (--size auto: median nucleus {area:.0f} px at {AUTO_SIZE} px)"


def _fit_phase(module, dm, *, k, cfg, run, deadline, max_epochs, rows, ckpt_path, reserve_s, progress,
               extra_callbacks, mode, tracker=None, post_val_passes: float = 1.0, best_name="best", epoch_offset=0,
               phase_name=None):
    """One ``trainer.fit`` of fold ``k`` (checkpoints, freezing, time budget, metrics rows, and
    the ``--logger`` tracker that :class:`EpochRecorder` feeds)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    from protloc.training.callbacks import AtomicCheckpointIO, EpochRecorder, FreezeBackbone, TimeBudget

    ckdir = run.ckpt_dir(k)
    budget = TimeBudget(deadline, reserve_s=reserve_s, post_val_passes=post_val_passes)
    callbacks = [ModelCheckpoint(dirpath=ckdir, filename=best_name, monitor=cfg.monitor, mode=mode, save_top_k=1,
                                 auto_insert_metric_name=False, enable_version_counter=False),
                 # last.ckpt after every epoch (Lightning's save_last only writes when best improves)
                 ModelCheckpoint(dirpath=ckdir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                                 auto_insert_metric_name=False, enable_version_counter=False),
                 FreezeBackbone(cfg.freeze_epochs, cfg.freeze_blocks), budget,
                 EpochRecorder(k, run.fold_metrics_csv(k), rows=rows, epoch_offset=epoch_offset, phase=phase_name),
                 *extra_callbacks]
    if cfg.patience > 0:
        callbacks.append(EarlyStopping(monitor=cfg.monitor, mode=mode, patience=cfg.patience))
    bar = progress and sys.stderr.isatty()
    if bar:
        callbacks.append(RichProgressBar())
    trainer = pl.Trainer(
        **trainer_hardware(cfg), max_epochs=max_epochs, accumulate_grad_batches=cfg.accumulate,
        callbacks=callbacks, logger=tracker or False, enable_progress_bar=bar, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run.root), benchmark=torch.cuda.is_available(), log_every_n_steps=10)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning turns Ctrl-C into sys.exit(1); let the CLI say how to resume
        if trainer.interrupted:
            log.info("fold %d interrupted; last.ckpt keeps the last finished epoch (use --resume)", k)
            raise KeyboardInterrupt from None
        raise
    return trainer, budget


def train_fold(k: int, cfg: TrainConfig, run: RunFolder, *, images, y, ids, folds, pre, spec,
               deadline: float | None, resume: bool, progress: bool, extra_callbacks=(),
               reserve_s: float = 3.0, unlabeled=None) -> dict | None:
    """Fit fold ``k``; on rank 0 export weights, OOF probabilities and the fold summary."""
    from protloc.training.datamodule import ProtlocDataModule
    from protloc.training.module import LitProtloc
    from protloc.training.losses import make_loss
    from protloc.training.tracking import make_logger
    from protloc.models.network import build_model

    train_idx, val_idx = np.flatnonzero((folds != k) & (folds != -2)), np.flatnonzero(folds == k)
    ckdir = run.ckpt_dir(k)
    last = ckdir / "last.ckpt"
    ckpt_path = str(last) if (resume and last.is_file()) else None
    if ckpt_path:
        log.info("fold %d: resuming from %s", k, last)
    torch.manual_seed(cfg.seed + k)
    net = build_model(spec, pretrained=cfg.pretrained, verbose=is_main_process())
    loss = make_loss(cfg.loss, y_train=y[train_idx], pos_weight=cfg.pos_weight, gamma=cfg.focal_gamma)
    module = LitProtloc(net, cfg, mean=pre.mean, std=pre.std, loss=loss)
    dm = ProtlocDataModule(images, y, train_idx, val_idx, batch_size=cfg.batch_size, seed=cfg.seed + 1000 * k,
                           workers=cfg.workers, sampler=cfg.sampler)
    mode = "min" if cfg.monitor.endswith("loss") else "max"
    hist = run.fold_metrics(k) if ckpt_path else None
    rows = hist.to_dict("records") if hist is not None else []
    tracker = make_logger(cfg.logger, run, k)  # a view of metrics.csv (EpochRecorder feeds it)
    if tracker is not None:
        tracker.log_hyperparams({**cfg.to_dict(), "fold": k})
    # after training: the OOD reference's features of up to OOD_TRAIN_IMAGES training images and
    # the validation images (counted in validation passes), kept out of the budget ...
    ood_images = (min(len(train_idx), OOD_TRAIN_IMAGES) + len(val_idx)) if min(len(train_idx), len(val_idx)) >= 8 else 0
    # ... their pixel statistics (CPU work a validation pass does not do), timed here on a few images
    # (a 15-minute run that left them out ended 8 s past its budget), and the OOF inference with
    # --oof-tta's views, in validation passes (OOF_PASS_MARGIN per view), which the planner scales by
    # the validation time it measures, so the reserve follows the machine's speed
    post_val_passes = ood_images / max(len(val_idx), 1) + oof_views(cfg) * OOF_PASS_MARGIN
    if deadline:
        reserve_s = reserve_s + ood_stats_seconds(images, train_idx, ood_images)
    phase = dict(k=k, cfg=cfg, run=run, progress=progress, extra_callbacks=extra_callbacks, mode=mode,
                 tracker=tracker, post_val_passes=post_val_passes)
    t0 = time.time()
    teacher_deadline, epochs = deadline, max_epochs(cfg)
    if unlabeled is not None:  # semi-supervised: a teacher phase, pseudo-labels, a student phase
        from protloc.training.semi import teacher_share

        teacher_deadline, epochs = teacher_share(cfg, deadline, epochs, now=t0)
    trainer, budget = _fit_phase(module, dm, deadline=teacher_deadline, max_epochs=epochs, rows=rows,
                                 ckpt_path=ckpt_path, reserve_s=reserve_s, **phase)
    if unlabeled is not None:
        from protloc.training.semi import student_phase

        module, trainer, budget = student_phase(module, images=images, y=y, unlabeled=unlabeled,
                                                train_idx=train_idx, val_idx=val_idx, pre=pre, deadline=deadline,
                                                reserve_s=reserve_s, fit_phase=_fit_phase, phase=phase,
                                                main=trainer.is_global_zero)
    best = ckdir / "best.ckpt"  # saved by rank 0 before the barrier that ends fit
    net = module.load_trained(best if best.is_file() else last).inference_net()  # the EMA copy with EMA
    from protloc.core.metrics import classification_summary, epoch_metrics
    from protloc.models.network import save_weights

    if trainer.is_global_zero:
        save_weights(net.cpu().eval(), run.model_path(k))
    probs = oof_probs(trainer, net, images, val_idx, mean=pre.mean, std=pre.std, batch_size=cfg.batch_size * 2,
                      tta=cfg.oof_tta)
    if not trainer.is_global_zero:
        return None
    device = module.device if module.device.type != "meta" else "cpu"
    fit_ood(net, images, train_idx, val_idx, pre=pre, path=run.ood_path(k), batch_size=cfg.batch_size * 2,
            device=device, seed=cfg.seed + k)
    classes = list(pre.classes)
    oof = pd.DataFrame(probs, columns=classes)
    oof.insert(0, "Label", [pre.schema.format(np.flatnonzero(r)) for r in y[val_idx]])
    oof.insert(0, "fold", k)
    oof.insert(0, "Image", [ids[i] for i in val_idx])
    hist = run.fold_metrics(k)
    ep = hist.loc[hist[cfg.monitor].idxmin() if mode == "min" else hist[cfg.monitor].idxmax()]
    m = epoch_metrics(y[val_idx], probs, threshold=cfg.threshold)
    summary = {"fold": k, "best_epoch": int(ep["epoch"]), "monitor": cfg.monitor,
               "best_score": float(ep[cfg.monitor]), "epochs_run": int(len(hist)),
               "stopped_by_time_budget": budget.stopped, "fit_seconds": round(time.time() - t0, 1),
               "max_epochs": max_epochs(cfg), "oof_tta": cfg.oof_tta,
               **({"budget": budget.summary()} if deadline else {}),
               **getattr(module, "semi_summary", {}),
               "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
               "val_macro_f1": m["val_macro_f1"], "val_macro_f1_best": m["val_macro_f1_best"], "val_mAP": m["val_mAP"],
               "empty_classes": [classes[c] for c in m["val_empty_classes"]],
               "val": classification_summary(y[val_idx], probs >= cfg.threshold, probs, classes=classes)}
    return {"oof": oof, "summary": summary}


def oof_probs(trainer, net, images, val_idx, *, mean, std, batch_size: int, tta: str = "none") -> np.ndarray:
    """Out-of-fold probabilities of ``images[val_idx]`` with test-time augmentation ``tta`` (the
    views of ``predict --tta``, so that thresholds fitted on them match its probabilities),
    computed by every rank on its share (:class:`~protloc.training.datamodule.EpochSampler`'s
    split, padded), gathered and de-duplicated by index; rows in ``val_idx`` order (sorted).
    Call it on every rank."""
    from protloc.training.datamodule import EpochSampler
    from protloc.training.module import infer_probs

    rank, world = trainer.global_rank, trainer.world_size
    device = trainer.strategy.root_device
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if world == 1 or len(val_idx) == 0:
        return infer_probs(net, images, mean=mean, std=std, indices=val_idx, batch_size=batch_size, device=device,
                           tta=tta)
    import torch

    mine = val_idx[np.fromiter(EpochSampler(len(val_idx), shuffle=False, rank=rank, world=world), dtype=np.int64)]
    probs = infer_probs(net, images, mean=mean, std=std, indices=mine, batch_size=batch_size, device=device, tta=tta)
    idx = trainer.strategy.all_gather(torch.as_tensor(mine, device=device)).reshape(-1).cpu().numpy()
    allp = trainer.strategy.all_gather(torch.as_tensor(probs, device=device)).reshape(len(idx), -1).cpu().numpy()
    uniq, first = np.unique(idx, return_index=True)  # drop the sampler's padding duplicates
    if not np.array_equal(uniq, np.sort(val_idx)):
        raise RuntimeError(f"out-of-fold gather: {len(uniq)} distinct images, expected {len(val_idx)}")
    return allp[first][np.searchsorted(uniq, val_idx)]


def pooled_features(net, images, indices, *, pre, batch_size: int = 64, device="cpu"):
    """``(pooled features (N, F), image statistics (N, 3C))`` of ``images[indices]``, no augmentation."""
    from protloc.core.ood import image_stats

    net = net.to(device).eval().to(memory_format=torch.channels_last)
    indices = np.asarray(indices)
    feats, stats = [], []
    with torch.inference_mode():
        for s in range(0, len(indices), batch_size):
            b = np.asarray(images[indices[s:s + batch_size]])  # one read per batch (the store reads by index)
            x = torch.from_numpy(pre.normalize(b)).to(device).contiguous(memory_format=torch.channels_last)
            feats.append(net.pooled(x).float().cpu().numpy())
            stats.append(image_stats(b))
    return np.concatenate(feats), np.concatenate(stats)


#: training images whose features make a fold's out-of-distribution reference (at most)
OOD_TRAIN_IMAGES = 4000


def oof_views(cfg: TrainConfig) -> int:
    """Views per image of the out-of-fold inference (``--oof-tta``)."""
    from protloc.core.tta import tta_views

    return len(tta_views(np.zeros((1, 1, 1, 1)), cfg.oof_tta))


#: validation passes kept per view of the out-of-fold inference (``--oof-tta``): one view of the
#: validation images costs a little more than a validation pass (Lite0, 128 px, 2 CPU cores: D4 71
#: ms per image, 9.3 passes of 7.7 ms; counted as 8, a 15-minute run ended 4 s past its budget).
#: Passes, not seconds timed when the fold starts: those kept 134 s for 63 s of work when another
#: job held the cores just then (10 epochs instead of 12), and a ratio timed on a few images varied
#: from 1 to 19 passes on a busy machine
OOF_PASS_MARGIN = 1.25


def ood_stats_seconds(images, idx, n: int, *, sample: int = 16) -> float:
    """Seconds the out-of-distribution reference's pixel statistics of ``n`` images will take,
    timed on (up to) ``sample`` images of ``images[idx]``: what the time budget keeps for them."""
    from protloc.core.ood import image_stats

    if not n or not len(idx):
        return 0.0
    b = np.asarray(images[np.sort(np.asarray(idx)[:sample])])
    t0 = time.perf_counter()
    image_stats(b)
    return (time.perf_counter() - t0) / len(b) * n


def fit_ood(net, images, train_idx, val_idx, *, pre, path, batch_size: int = 64, device="cpu", seed: int = 0,
            max_train: int = OOD_TRAIN_IMAGES):
    """Fit fold ``k``'s :class:`~protloc.core.ood.OODDetector` on (up to ``max_train``) training
    images and calibrate its threshold on the fold's validation images; save it to ``path``.

    Skipped (logged) with fewer than 8 training or validation images."""
    from protloc.core.ood import OODDetector

    if len(train_idx) < 8 or len(val_idx) < 8:
        log.info("out-of-distribution reference skipped: %d training / %d validation images (8 needed)",
                 len(train_idx), len(val_idx))
        return None
    rng = np.random.default_rng(seed)
    use = np.sort(rng.choice(train_idx, min(len(train_idx), max_train), replace=False))
    ft, st = pooled_features(net, images, use, pre=pre, batch_size=batch_size, device=device)
    fv, sv = pooled_features(net, images, np.asarray(val_idx), pre=pre, batch_size=batch_size, device=device)
    det = OODDetector().fit(ft, st).calibrate(fv, sv)
    det.save(path)
    log.info("out-of-distribution reference: %d features, %d training / %d validation images, threshold %.3f",
             det.n_features, det.n_train_, det.n_val_, det.threshold_)
    return det


def refit_ood(run: RunFolder, table, *, progress: bool = False, workers: int | None = None) -> list[int]:
    """Fit (again) the out-of-distribution reference of every trained fold of a finished run, from
    its training data ``table`` (read with the run's recorded reading), its ``splits.csv`` and its
    fold models: for runs trained before protloc recorded one. Returns the folds fitted."""
    from protloc.data.cache import load_cached
    from protloc.models.network import load_weights

    pre = run.preprocessing()
    folds = _read_splits(run, table, fix="refit needs the run's splits (re-train)")
    ds = load_cached(table, size=pre.size, progress=progress, workers=workers, reading=pre.reading, skip_bad=True)
    folds[np.asarray(ds.bad, dtype=int)] = -2
    done, seed = [], run.config().seed
    for k in run.folds():
        train_idx, val_idx = np.flatnonzero((folds != k) & (folds != -2)), np.flatnonzero(folds == k)
        net = load_weights(run.model_path(k))
        if fit_ood(net, ds.images, train_idx, val_idx, pre=pre, path=run.ood_path(k), seed=seed + k):
            done.append(k)
    return done


def merge_folds(run: RunFolder) -> dict:
    """Combine ``folds/fold*/`` into ``oof.csv``, ``metrics.csv`` and ``summary.json``."""
    from protloc.core.metrics import epoch_metrics

    folds = run.fold_results()
    done = [k for k in folds if run.fold_finished(k)]
    if not done:
        raise RunFolderError(f"{run.root}: no finished fold to merge (folds/fold*/summary.json)", fix="train "
                             "first, or copy the fold folders of other machines into this run folder")
    pre = run.preprocessing()
    classes = list(pre.classes)
    oof = pd.concat([run.fold_oof(k) for k in done], ignore_index=True)
    splits = run.splits()
    if splits is not None:
        order = {iid: i for i, iid in enumerate(splits["Image"])}
        oof = oof.iloc[np.argsort([order.get(i, len(order)) for i in oof["Image"]], kind="stable")]
    write_csv(run.oof_csv, oof)
    mets = [m for m in (run.fold_metrics(k) for k in folds) if m is not None]
    if mets:
        write_csv(run.metrics_csv, pd.concat(mets, ignore_index=True))
    fold_sums = [run.fold_summary(k) for k in done]
    y = pre.schema.to_multihot([pre.schema.parse(t) for t in oof["Label"].fillna("").astype(str)])
    cfg = run.config()
    m = epoch_metrics(y, oof[classes].to_numpy(np.float32), threshold=cfg.threshold)
    summary = {"folds_done": [s["fold"] for s in fold_sums], "n_folds": cfg.folds,
               "monitor": cfg.monitor, "oof_images": int(len(oof)), "threshold": cfg.threshold,
               "val_macro_f1": m["val_macro_f1"], "val_macro_f1_best": m["val_macro_f1_best"],
               "val_mAP": m["val_mAP"], "val_micro_f1": m["val_micro_f1"],
               "empty_classes": [classes[c] for c in m["val_empty_classes"]],
               "fit_seconds": round(sum(s.get("fit_seconds", 0) for s in fold_sums), 1),
               "fold_summaries": fold_sums}
    write_json(run.summary_json, summary)
    return summary


def _read_splits(run: RunFolder, table, *, fix: str = "train again from the start (rank 0 writes it)") -> np.ndarray:
    """Validation fold per table row from ``splits.csv`` (-2: not in it)."""
    sp = run.splits()
    if sp is None:
        raise RunFolderError(f"{run.splits_csv}: missing", fix=fix)
    pos = {iid: i for i, iid in enumerate(table.ids)}
    folds = np.full(len(table), -2, dtype=int)
    for iid, f in zip(sp["Image"], sp["fold"]):
        if iid in pos:
            folds[pos[iid]] = int(f)
    return folds


def _devices_per_node(cfg: TrainConfig) -> int | None:
    d = _devices(cfg.devices)
    return d if isinstance(d, int) and d > 0 else (len(d) if isinstance(d, list) else None)


def _single_process(cfg: TrainConfig, launch) -> bool:
    """No other rank will run this setup: one device on one node and no external launcher."""
    return not launch.external and cfg.num_nodes == 1 and _devices_per_node(cfg) == 1


def _check_out(run: RunFolder, todo: list[int], *, resume: bool, overwrite: bool) -> None:
    if resume or overwrite:
        return
    busy = [k for k in todo if run.ckpt_dir(k).is_dir() and any(run.ckpt_dir(k).glob("*.ckpt"))]
    if busy:
        raise RunFolderError(f"{run.root}: fold {busy[0]} already has checkpoints", fix="pass --resume to "
                             "continue it, --overwrite to start again, or a new --out folder")


def run_training(cfg: TrainConfig, table, out, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, echo: bool = True, extra_callbacks=(),
                 data_source: DataSource | None = None, started_at: float | None = None) -> dict:
    """Train every requested fold of ``cfg`` on ``table`` into the run folder ``out``.

    Returns the merged summary (``summary.json``). See the module docstring for the files.
    ``data_source`` is recorded as ``RUN/data.json`` (default: what ``table`` knows; the CLI adds
    the column names it was given). ``started_at`` (``time.time()`` seconds, default now): where
    ``cfg.max_minutes`` counts from; ``protloc train`` passes its process start, so the budget is
    the whole command's, imports and table reading included.

    Examples
    --------
    >>> run_training(TrainConfig.preset("fast"), load_table(data="data/"), "runs/r1")  # doctest: +SKIP
    """
    from protloc.training import check_recipe

    import lightning.pytorch  # noqa: F401 - configures its loggers on import; quiet them after

    check_recipe(cfg)  # every option (folds included) before the run folder is touched
    run = RunFolder(out)
    created = not run.root.exists()
    try:
        return _run_training(cfg, table, run, resume=resume, overwrite=overwrite, progress=progress, echo=echo,
                             extra_callbacks=extra_callbacks, data_source=data_source, started_at=started_at)
    except BaseException:
        if created:  # a failure before anything was set up (bad data, bad images): leave no half-made run
            _remove_if_only_log(run)
        raise
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Destroy the torch.distributed process group this process joined (srun/torchrun ranks:
    Lightning leaves it open). A rank that exits with a live gloo group can die in the C++
    teardown ("terminate called without an active exception": SIGABRT) after its work
    is done; the collectives all happen inside the folds, so every rank is past them here."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - teardown must never replace the run's own outcome
        pass


def _remove_if_only_log(run: RunFolder) -> None:
    import shutil

    for h in list(log.handlers):  # release train.log
        if isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    try:
        left = {p.name for p in run.root.iterdir()}
    except OSError:
        return
    if left <= {run.log.name}:
        shutil.rmtree(run.root, ignore_errors=True)


def _run_training(cfg: TrainConfig, table, run: RunFolder, *, resume: bool, overwrite: bool, progress: bool,
                  echo: bool, extra_callbacks, data_source: DataSource | None, started_at: float | None) -> dict:
    from protloc.cluster import begin_setup, ensure_launch_id, publish_setup, setup_key, wait_for_setup
    from protloc.core.modelspec import ModelSpec
    from protloc.core.preprocessing import Preprocessing, channel_stats
    from protloc.data.cache import table_digest

    import warnings

    setup_logging(run, echo=echo)
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*recommended to use `self.log.*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen stages / EMA copy
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # student phase
    launch = ensure_launch_id(devices_per_node=_devices_per_node(cfg))
    main = launch.is_main
    if not table.labeled:
        raise InputError(str(table.csv_path or table.images), expected="a CSV with a label column",
                         got="no labels", fix="pass --csv with Image,Label columns")
    n_val_folds = 1 if cfg.folds == 1 else cfg.folds  # fold numbers are checked by check_recipe above
    todo = [cfg.fold] if cfg.fold is not None else list(range(n_val_folds))
    threads = set_threads(cfg)
    t_start = time.time() if started_at is None else min(started_at, time.time())
    spec = ModelSpec(backbone=cfg.model, in_chans=len(table.channels), num_classes=table.schema.n_classes,
                     pool=cfg.pool, dropout=cfg.dropout, hidden=cfg.hidden, drop_path=cfg.drop_path)
    y = table.y()
    # once per data set, on rank 0 only: store check/build, folds (near-duplicate hashing), channel
    # statistics; the other ranks wait for its marker and read its results (protloc.cluster)
    marker = run.launch_marker(launch)
    key = setup_key(cfg.to_dict(), table_digest(table), bool(resume), bool(overwrite))  # reads no image
    handshake = not _single_process(cfg, launch)
    if main:
        log.info("protloc train -> %s (preset %s, model %s, %s px, %s epochs, loss %s, %d threads%s)", run.root,
                 cfg.preset, cfg.model, cfg.size or "auto", cfg.epochs or f"auto (at most {max_epochs(cfg)})", cfg.loss,
                 threads, f", budget {cfg.max_minutes:g} min" if cfg.max_minutes else "")
        for note in table.notes:  # rows left out (e.g. --from-schema hpa28 mapping): on screen and in the log
            log.warning("note: %s", note)
        if handshake:
            begin_setup(marker)
        try:
            _check_out(run, todo, resume=resume, overwrite=overwrite)
            saved = (run.preprocessing() if run.preprocessing_json.is_file() and (resume or cfg.fold is not None)
                     else None)  # read once: reading, names, size, statistics
            if saved is not None:
                reading, names, notes = saved.reading, saved.channel_names, []
            else:
                from protloc.data.reading import training_reading

                reading, names, notes = training_reading(table, intensity=cfg.intensity, z=cfg.z,
                                                         pixel_size=cfg.pixel_size or None)
            for note in notes:
                log.info("images: %s", note)
            log.info("intensity: %s", reading.intensity.describe())
            size, why = ((saved.size, f"{saved.size} px (as the run started)") if saved is not None
                         else resolve_size(cfg, table, reading=reading))
            cfg = replace(cfg, size=size)
            log.info("image size: %s", why)
            ds, usable = load_data(table, cfg, progress=progress, reading=reading)
            if (resume or cfg.fold is not None) and run.splits() is not None:
                folds = _read_splits(run, table)
            else:
                folds = assign_folds(table, cfg, usable, progress=progress)
            if saved is not None:
                pre = saved
            else:
                rng = np.random.default_rng(cfg.seed)
                sample = np.sort(rng.choice(usable, min(len(usable), 2000), replace=False))
                mean, std = channel_stats(np.asarray(ds.images[sample]))
                pre = Preprocessing(fmt=table.fmt, channels=table.channels, size=cfg.size, mean=mean, std=std,
                                    schema=table.schema, reading=reading, channel_names=names)
            run.save_setup(config=cfg, preprocessing=pre, model_spec=spec,
                           data_source=data_source or DataSource.from_table(table))
            keep = folds != -2
            write_csv(run.splits_csv, pd.DataFrame({"Image": np.asarray(table.ids)[keep], "fold": folds[keep]}))
        except BaseException as e:
            # ranks started by srun/torchrun wait now: they stop with rank 0's error instead of timing
            # out (the marker keeps the run folder; Lightning's own launcher starts no rank before fit)
            if handshake and launch.external:
                publish_setup(marker, launch, key=key, error=str(e) or type(e).__name__)
            raise
        if handshake:
            publish_setup(marker, launch, key=key, info={"store": str(ds.path) if ds.path else None})
    else:
        wait_for_setup(marker, launch, key=key, what=f"the data setup of {run.root}")
        pre = run.preprocessing()
        cfg = replace(cfg, size=pre.size)  # rank 0 resolved --size 0
        ds, usable = load_data(table, cfg, progress=False, trust=True, reading=pre.reading)  # checked by rank 0
        folds = _read_splits(run, table)
        print(f"{launch.describe()}: using rank 0's data setup (store checked by rank 0, splits.csv, "
              "preprocessing.json)", file=sys.stderr, flush=True)
    unlabeled = (load_unlabeled(cfg, table, progress=progress and main, reading=pre.reading)
                 if cfg.unlabeled else None)
    for j, k in enumerate(todo):
        if resume and run.fold_summary_json(k).is_file() and run.model_path(k).is_file():
            log.info("fold %d: already finished, skipping", k)
            continue
        deadline = None
        if cfg.max_minutes:
            left = t_start + cfg.max_minutes * 60 - time.time()
            deadline = time.time() + max(left, 0) / (len(todo) - j)
        res = train_fold(k, cfg, run, images=ds.images, y=y, ids=table.ids, folds=folds, pre=pre, spec=spec,
                         deadline=deadline, resume=resume, progress=progress, extra_callbacks=extra_callbacks,
                         unlabeled=unlabeled)
        if res is not None:
            write_csv(run.fold_oof_csv(k), res["oof"])
            write_json(run.fold_summary_json(k), res["summary"])
            s = res["summary"]
            log.info("fold %d done: best epoch %d, %s %.4f; val macro F1 %.4f (best-threshold %.4f), mAP %.4f",
                     k, s["best_epoch"], s["monitor"], s["best_score"], s["val_macro_f1"],
                     s["val_macro_f1_best"], s["val_mAP"])
    if not main:
        return {}
    summary = merge_folds(run)
    summary["wall_seconds"] = round(time.time() - t_start, 1)
    if cfg.max_minutes:
        sums = summary.get("fold_summaries", [])
        summary["budget"] = {"max_minutes": cfg.max_minutes, "used_minutes": round(summary["wall_seconds"] / 60, 2),
                             "used_fraction": round(summary["wall_seconds"] / 60 / cfg.max_minutes, 3),
                             "epochs_planned": [s.get("budget", {}).get("planned_epochs") for s in sums],
                             "epochs_run": [s.get("epochs_run") for s in sums]}
        b = summary["budget"]
        log.info("time budget: %.1f of %.1f minutes used (%.0f%%); epochs planned %s, run %s", b["used_minutes"],
                 cfg.max_minutes, 100 * b["used_fraction"], b["epochs_planned"], b["epochs_run"])
    write_json(run.summary_json, summary)
    log.info("run %s: OOF macro F1 %.4f over %d images (folds %s) in %.0f s", run.root, summary["val_macro_f1"],
             summary["oof_images"], summary["folds_done"], summary["wall_seconds"])
    return summary
