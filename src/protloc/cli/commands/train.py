"""``protloc train``: train (and cross-validate) a model into a run folder."""

from __future__ import annotations

import argparse

from protloc.cli.main import add_data_args, new_command, table_from_args

#: CLI flag -> (TrainConfig key, type, help)
FLAGS = {
    "--model": ("model", str, "any timm model name (tf_efficientnet_lite0 has offline ImageNet weights)"),
    "--pretrained": ("pretrained", str, "none | auto | offline | hub | PATH to a weights file"),
    "--size": ("size", int, "image side in pixels the model sees"),
    "--epochs": ("epochs", int, "maximum epochs per fold"),
    "--batch-size": ("batch_size", int, "images per batch and process"),
    "--lr": ("lr", float, "peak learning rate of the head (backbone: lr * --backbone-lr-mult)"),
    "--backbone-lr-mult": ("backbone_lr_mult", float, "backbone learning-rate factor"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay"),
    "--optimizer": ("optimizer", str, "adamw | adam | sgd"),
    "--schedule": ("schedule", str, "cosine (warmup + cosine) | onecycle | constant"),
    "--warmup-epochs": ("warmup_epochs", float, "linear warmup length (cosine schedule)"),
    "--freeze-epochs": ("freeze_epochs", int, "train the head only for N epochs (-1: always)"),
    "--freeze-blocks": ("freeze_blocks", int, "keep the stem + first N backbone stages frozen (0 = none)"),
    "--accumulate": ("accumulate", int, "gradient accumulation steps"),
    "--ema": ("ema", float, "EMA decay of the weights (0 = off), e.g. 0.998"),
    "--loss": ("loss", str, "bce | focal | asl | softf1 or a weighted sum like bce+0.5*softf1"),
    "--pos-weight": ("pos_weight", str, "none | auto (per-class neg/pos for BCE/focal)"),
    "--sampler": ("sampler", str, "random | balanced (class-balanced sampling) | shard-block (reads "
                                 "the cache store a few shards at a time: data larger than RAM, shared file systems)"),
    "--augment": ("augment", str, "comma list of d4, flips, rotate, crop, jitter, or none"),
    "--pool": ("pool", str, "avg | max | avgmax | catavgmax"),
    "--dropout": ("dropout", float, "head dropout"),
    "--hidden": ("hidden", int, "hidden units of the head (0 = linear head)"),
    "--monitor": ("monitor", str, "checkpoint/early-stop metric: val_macro_f1 (at --threshold), "
                                  "val_macro_f1_best, val_mAP or val_loss"),
    "--patience": ("patience", int, "early stopping patience in epochs (0 = off)"),
    "--threshold": ("threshold", float, "threshold of the monitored macro F1"),
    "--folds": ("folds", int, "K-fold cross-validation (1 = one 80/20 holdout stored as fold 0)"),
    "--fold": ("fold", int, "train only fold k of --folds K (merge later with --merge)"),
    "--val-fraction": ("val_fraction", float, "holdout fraction when --folds 1"),
    "--seed": ("seed", int, "random seed (folds, shuffling, augmentation)"),
    "--accelerator": ("accelerator", str, "auto | cpu | gpu"),
    "--devices": ("devices", str, "number of devices/processes, e.g. 1, 2, auto or 0,1"),
    "--strategy": ("strategy", str, "auto | ddp | ddp_spawn | fsdp ... (Lightning strategies)"),
    "--num-nodes": ("num_nodes", int, "machines for multi-node DDP"),
    "--precision": ("precision", str, "auto | 32-true | bf16-mixed | 16-mixed"),
    "--threads": ("threads", int, "torch CPU threads per process (0 = cores / processes)"),
    "--workers": ("workers", int, "decode workers and DataLoader workers"),
    "--max-minutes": ("max_minutes", float, "time budget: stop cleanly at an epoch boundary, keep the best"),
}


def register(sub) -> None:
    p = new_command(sub, "train", help="train a model (optionally K-fold cross-validated) into a run folder",
                    example="protloc train --data data/ --out runs/r1 --folds 5")
    add_data_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder to write")
    g.add_argument("--config", default=None, help="YAML config (e.g. another run's config.yaml)")
    g.add_argument("--preset", default=None, choices=("default", "seed", "fast"),
                   help="recipe: default, seed (reference notebook), fast [default: default]")
    g.add_argument("--resume", action="store_true", help="continue from checkpoints/fold{k}/last.ckpt")
    g.add_argument("--overwrite", action="store_true", help="retrain folds that already have checkpoints")
    g.add_argument("--merge", action="store_true", help="only merge finished folds/fold*/ into oof/metrics/summary")
    g.add_argument("--skip-bad", action="store_true", default=None, help="skip unreadable images (reported)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--no-near-dup", dest="near_dup", action="store_false", default=None,
                   help="do not group near-duplicate images into one fold")
    g.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    from protloc.cli.commands.cache import add_store_args

    add_store_args(g)
    h = p.add_argument_group("recipe (override --preset / --config; default: from the preset)")
    for flag, (key, typ, text) in FLAGS.items():
        h.add_argument(flag, dest=key, type=typ, default=None, help=text)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from protloc.core.config import TrainConfig
    from protloc.core.runfolder import RunFolder

    flags = {key: getattr(args, key, None) for key, _, _ in FLAGS.values()}
    flags.update(skip_bad=args.skip_bad, compile=args.compile, near_dup=args.near_dup)
    file = args.config
    if file is None and args.resume and RunFolder(args.out).config_yaml.is_file():
        file = RunFolder(args.out).config_yaml
    cfg = TrainConfig.resolve(preset=args.preset, file=file, **flags)
    return cfg


def run(args) -> int:
    from protloc.core.runfolder import RunFolder
    from protloc.training.train import merge_folds, run_training, setup_logging

    if args.merge:
        run_ = RunFolder(args.out).check(need_models=False)
        setup_logging(run_)
        s = merge_folds(run_)
        print(f"merged folds {s['folds_done']}: OOF macro F1 {s['val_macro_f1']:.4f} over {s['oof_images']} images")
        return 0
    from protloc.cli.commands.cache import apply_store_args

    cfg = config_from_args(args)
    apply_store_args(args)
    table = table_from_args(args, labels=True)
    summary = run_training(cfg, table, args.out, resume=args.resume, overwrite=args.overwrite,
                           progress=not args.quiet, echo=not args.quiet)
    if summary:
        print(f"run folder: {args.out}  OOF macro F1 {summary['val_macro_f1']:.4f} "
              f"(best-threshold {summary['val_macro_f1_best']:.4f}, mAP {summary['val_mAP']:.4f}) "
              f"on {summary['oof_images']} images")
    return 0
