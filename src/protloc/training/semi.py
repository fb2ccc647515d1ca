"""Semi-supervised training (``protloc train --unlabeled DIR``): teacher, pseudo-labels, student.

What the HPA 2018 top teams did with the unlabeled test images, inside one time budget:

1. **teacher**: the recipe trains on the labeled images for ``--teacher-share`` of the fold's
   time (or of its epochs without a budget), with its own planned schedule;
2. **pseudo-labels**: the teacher's best checkpoint predicts the unlabeled images;
   :func:`pseudo_targets` keeps confident probabilities as hard 0/1 targets and uncertain ones as
   soft targets (``--pseudo-targets``);
3. **student**: starts from the teacher's weights and trains on the labeled plus the pseudo-labeled
   images for the rest of the budget with a new warmup-cosine schedule. Validation stays on the
   labeled validation fold, so the fold keeps whichever checkpoint (teacher's or student's)
   validates better: pseudo-labelling can never make the kept model worse on validation.

The unlabeled images are never scored; they only shape the training.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time

import numpy as np

log = logging.getLogger("protloc.training.train")


def teacher_share(cfg, deadline: float | None, epochs: int, *, now: float) -> tuple[float | None, int]:
    """The teacher phase's deadline and epoch cap.

    Examples
    --------
    >>> from protloc.core.config import TrainConfig
    >>> teacher_share(TrainConfig(teacher_share=0.5), 100.0, 20, now=0.0)
    (50.0, 20)
    >>> teacher_share(TrainConfig(teacher_share=0.5), None, 20, now=0.0)
    (None, 10)
    """
    if deadline:
        return now + cfg.teacher_share * (deadline - now), epochs
    return None, max(1, int(round(epochs * cfg.teacher_share)))


def pseudo_targets(probs: np.ndarray, *, mode: str = "sharpened", confident: float = 0.8) -> np.ndarray:
    """Targets for the unlabeled images from the teacher's probabilities.

    ``soft``: the probabilities; ``hard``: ``p >= 0.5``; ``sharpened``: 1 where ``p >= confident``,
    0 where ``p <= 1 - confident``, the probability in between.

    Examples
    --------
    >>> pseudo_targets(np.array([[0.95, 0.5, 0.05]])).tolist()
    [[1.0, 0.5, 0.0]]
    >>> pseudo_targets(np.array([[0.95, 0.5, 0.05]]), mode="hard").tolist()
    [[1.0, 1.0, 0.0]]
    """
    p = np.asarray(probs, dtype=np.float32)
    if mode == "soft":
        return p
    if mode == "hard":
        return (p >= 0.5).astype(np.float32)
    return np.where(p >= confident, 1.0, np.where(p <= 1 - confident, 0.0, p)).astype(np.float32)


def student_phase(teacher, *, images, y, unlabeled, train_idx, val_idx, pre, deadline, reserve_s,
                  fit_phase, phase: dict, main: bool):
    """Pseudo-label ``unlabeled`` with the teacher's best checkpoint, then train the student.

    Returns ``(module, trainer, budget)`` of the phase whose checkpoint the fold keeps
    (``RUN/checkpoints/fold{k}/best.ckpt`` is the better of the two by ``--monitor``).
    """
    import torch

    from protloc.training.datamodule import ConcatImages, ProtlocDataModule
    from protloc.training.module import LitProtloc, infer_probs

    cfg, run, k, mode = phase["cfg"], phase["run"], phase["k"], phase["mode"]
    ckdir = run.ckpt_dir(k)
    best = ckdir / "best.ckpt"
    teacher.load_trained(best if best.is_file() else ckdir / "last.ckpt")
    net = teacher.inference_net()
    t0 = time.time()
    device = teacher.device if teacher.device.type != "meta" else "cpu"
    probs = infer_probs(net, unlabeled, mean=pre.mean, std=pre.std, batch_size=cfg.batch_size * 2, device=device)
    targets = pseudo_targets(probs, mode=cfg.pseudo_targets)
    hard = float(np.mean((targets == 0) | (targets == 1)))
    log.info("fold %d: teacher pseudo-labelled %d unlabeled images in %.0f s (%.0f%% of the targets confident, "
             "%.2f labels per image)", k, len(unlabeled), time.time() - t0, 100 * hard, float((probs >= 0.5).sum(1).mean()))
    n = len(images)
    images2 = ConcatImages(images, unlabeled)
    y2 = np.concatenate([np.asarray(y, np.float32), targets])
    train2 = np.concatenate([train_idx, n + np.arange(len(unlabeled))])
    hist = run.fold_metrics(k)
    rows = hist.to_dict("records") if hist is not None else []
    teacher_best = _best(hist, cfg.monitor, mode)
    student_cfg = cfg.override(warmup_epochs=min(cfg.warmup_epochs, 0.5), freeze_epochs=0 if cfg.freeze_epochs > 0
                               else cfg.freeze_epochs)
    from protloc.training.losses import make_loss

    student_net = copy.deepcopy(net).train()
    loss = make_loss(cfg.loss, y_train=y2[train2], pos_weight=cfg.pos_weight, gamma=cfg.focal_gamma)
    student = LitProtloc(student_net, student_cfg, mean=pre.mean, std=pre.std, loss=loss)
    dm = ProtlocDataModule(images2, y2, train2, val_idx, batch_size=cfg.batch_size, seed=cfg.seed + 1000 * k + 7,
                           workers=cfg.workers, sampler=cfg.sampler)
    torch.manual_seed(cfg.seed + k + 99)
    from protloc.training.train import max_epochs

    epochs = max_epochs(cfg) if deadline else max(1, max_epochs(cfg) - len(rows))
    s_trainer, s_budget = fit_phase(student, dm, deadline=deadline, max_epochs=epochs, rows=rows, ckpt_path=None,
                                    reserve_s=reserve_s, best_name="best_student", epoch_offset=len(rows),
                                    phase_name="student", **{**phase, "cfg": student_cfg})
    hist = run.fold_metrics(k)
    student_rows = hist.iloc[len(rows):]
    student_best = _best(student_rows, cfg.monitor, mode)
    sbest = ckdir / "best_student.ckpt"
    better = sbest.is_file() and (student_best > teacher_best if mode == "max" else student_best < teacher_best)
    if main and better:
        from protloc.core.atomic import atomic_path

        with atomic_path(best) as tmp:
            shutil.copyfile(sbest, tmp)
    log.info("fold %d: student %s %.4f vs teacher %.4f: keeping the %s", k, cfg.monitor, student_best, teacher_best,
             "student" if better else "teacher")
    keep = student if better else teacher
    keep.semi_summary = {"semi_supervised": {
        "unlabeled_images": int(len(unlabeled)), "pseudo_targets": cfg.pseudo_targets,
        "confident_fraction": round(hard, 4), "teacher_epochs": len(rows), "student_epochs": int(len(student_rows)),
        "teacher_best": round(float(teacher_best), 4), "student_best": round(float(student_best), 4),
        "kept": "student" if better else "teacher"}}
    return keep, s_trainer, s_budget


def _best(hist, monitor: str, mode: str) -> float:
    if hist is None or not len(hist):
        return float("-inf") if mode == "max" else float("inf")
    v = hist[monitor].astype(float)
    return float(v.max() if mode == "max" else v.min())
