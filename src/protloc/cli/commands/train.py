"""``protloc train``: train (and cross-validate) a model into a run folder.

The recipe flags are generated from :class:`protloc.core.config.TrainConfig`: one flag per field
(``--batch-size`` for ``batch_size``, ``--x/--no-x`` for booleans), with the field's help,
choices and default, so the command, the config file and the help never drift apart.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from protloc.cli.main import add_data_args, new_command, table_from_args
from protloc.cli.options import InDir, InFile, OutDir, config_option, declare_paths
from protloc.core.config import TrainConfig, field_type, flag_name

#: help group titles of TrainConfig's field groups (fields of the "run" group join the run options)
GROUP_TITLES = {
    "run": "run",
    "recipe": "recipe",
    "model": "model", "optimisation": "optimisation", "evaluation": "evaluation and checkpoint selection",
    "cross-validation": "cross-validation", "hardware / engine": "hardware and engine",
    "semi-supervised": "semi-supervised (pseudo-labels on unlabeled images)",
}


def add_config_args(p: argparse.ArgumentParser, groups: dict | None = None) -> None:
    """One flag per :class:`TrainConfig` field, grouped like the fields (``groups``: existing
    argument groups by title); a flag not given is absent from the parsed namespace."""
    defaults, groups = TrainConfig(), dict(groups or {})
    for f in fields(TrainConfig):
        meta, typ = f.metadata, field_type(f)
        title = GROUP_TITLES[meta["group"]]
        g = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        value = getattr(defaults, f.name)
        text = meta["help"].replace("%", "%%") + (f" (default: {value})" if value not in (None, "") else "")
        if typ is bool:
            g.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=text)
            continue
        choices = meta.get("choices")
        g.add_argument(flag_name(f.name), dest=f.name, type=config_option(f.name), default=argparse.SUPPRESS, help=text,
                       metavar="{" + ",".join(choices) + "}" if choices else None)


def register(sub) -> None:
    p = new_command(sub, "train", help="train a model (optionally K-fold cross-validated) into a run folder",
                    example="protloc train --data data/ --out runs/r1 --folds 5",
                    description="Train a model (optionally K-fold cross-validated) into a run folder.\n\n"
                                "Options resolve in order: --preset, then --config FILE, then the flags. "
                                "The defaults shown\nare the default preset's; RUN/config.yaml records "
                                "the resolved options.")
    add_data_args(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder to write")
    g.add_argument("--config", default=None, help="YAML config (e.g. another run's config.yaml)")
    g.add_argument("--resume", action="store_true", help="continue from checkpoints/fold{k}/last.ckpt")
    g.add_argument("--overwrite", action="store_true", help="retrain folds that already have checkpoints")
    g.add_argument("--merge", action="store_true", help="only merge finished folds/fold*/ into oof/metrics/summary")
    g.add_argument("--refit-ood", action="store_true",
                   help="only fit the out-of-distribution reference of a finished run (models/fold*.ood.npz) "
                        "from its training data and splits, e.g. for runs trained before protloc recorded one")
    g.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    from protloc.cli.commands.cache import add_store_args

    add_store_args(g)
    add_config_args(p, {"run": g})
    declare_paths(p, OutDir("out", "run folder"), InFile("config", "config file"),
                  InDir("unlabeled", "unlabeled images"),
                  OutDir("cache_dir", "cache folder"))
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset -> ``--config`` file (or the run's own config.yaml on ``--resume``) -> flags."""
    from protloc.core.runfolder import RunFolder

    flags = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    file = args.config
    if file is None and args.resume and RunFolder(args.out).config_yaml.is_file():
        file = RunFolder(args.out).config_yaml
    return TrainConfig.resolve(file=file, default_preset=default_preset(args), **flags)


def default_preset(args) -> str:
    """``gpu`` when training will run on CUDA (a GPU is there and --accelerator allows it), else ``default``."""
    from protloc.core.config import DEFAULT_PRESET, GPU_PRESET

    if getattr(args, "accelerator", "auto") not in ("auto", "gpu", "cuda"):
        return DEFAULT_PRESET
    import torch

    return GPU_PRESET if torch.cuda.is_available() else DEFAULT_PRESET


def gpu_channels(args, cfg: TrainConfig) -> None:
    """The GPU recipe trains on all 4 HPA channels when the yellow (ER) files are there and
    --channels was not given."""
    if cfg.preset != "gpu" or args.channels is not None or args.format not in ("auto", "hpa-channels"):
        return
    table = table_from_args(args, labels=True)
    if table.fmt == "hpa-channels" and all(p.is_file() for p in _yellow_files(table)):
        args.channels = "all"
        print("note: GPU recipe: training on 4 channels (red, green, blue, yellow)", file=sys.stderr)


def _yellow_files(table):
    """The yellow channel files of (up to 20 of) the table's images."""
    from protloc.data.table import hpa_channel_path

    return [hpa_channel_path(table.images, table.ids[i], "yellow") or table.images / f"{table.ids[i]}_yellow.png"
            for i in range(min(len(table), 20))]


def run(args) -> int:
    from protloc.core.runfolder import RunFolder
    from protloc.training import check_recipe
    from protloc.training.train import merge_folds, run_training, setup_logging

    if args.refit_ood:
        from protloc.training.train import refit_ood

        run_ = RunFolder(args.out).check()
        setup_logging(run_)
        pre = run_.preprocessing()
        if args.channels is None and pre.fmt != "rgb":
            args.channels = ",".join(map(str, pre.channels))
        done = refit_ood(run_, table_from_args(args, labels=True), progress=not args.quiet)
        print(f"out-of-distribution reference fitted for folds {done} in {run_.models_dir}")
        return 0
    if args.merge:
        run_ = RunFolder(args.out).check(need_models=False)
        setup_logging(run_)
        s = merge_folds(run_)
        print(f"merged folds {s['folds_done']}: OOF macro F1 {s['val_macro_f1']:.4f} over {s['oof_images']} images")
        return 0
    from protloc.cli.commands.cache import apply_store_args

    cfg = check_recipe(config_from_args(args))  # every option checked before any file is written
    apply_store_args(args)
    gpu_channels(args, cfg)
    table = table_from_args(args, labels=True)
    if args.quiet:  # otherwise run_training echoes them with the log (and always writes them to train.log)
        for note in table.notes:  # never drop rows silently
            print(f"note: {note}", file=sys.stderr)
    from protloc.core.runfolder import DataSource

    source = DataSource.from_table(table, id_col=args.id_col, label_col=getattr(args, "label_col", None),
                                   from_schema=getattr(args, "from_schema", None))  # RUN/data.json
    summary = run_training(cfg, table, args.out, resume=args.resume, overwrite=args.overwrite,
                           progress=not args.quiet, echo=not args.quiet, data_source=source,
                           started_at=getattr(args, "started_at", None))  # the budget is the whole command's
    if summary:
        print(f"run folder: {args.out}  OOF macro F1 {summary['val_macro_f1']:.4f} "
              f"(best-threshold {summary['val_macro_f1_best']:.4f}, mAP {summary['val_mAP']:.4f}) "
              f"on {summary['oof_images']} images")
        b = summary.get("budget")
        if b:
            print(f"time budget: {b['used_minutes']:.1f} of {b['max_minutes']:g} minutes used; epochs planned "
                  f"{b['epochs_planned']}, run {b['epochs_run']}")
    return 0
