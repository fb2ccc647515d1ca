"""``protloc synth``: write a realistic synthetic HPA-like dataset (and/or a gallery PNG)."""

from __future__ import annotations

import sys

from protloc.cli.main import new_command
from protloc.cli.options import (OutDir, OutFile, declare_paths, from_function, integer, nonneg_int, number,
                                  positive_int, seed)


def register(sub) -> None:
    from protloc.synth.styles import style_names

    p = new_command(
        sub, "synth",
        help="write a synthetic HPA-like dataset in the reference task's layout",
        description="Write synthetic fluorescence images (red microtubules, green protein, blue "
                    "nucleus[, yellow ER]) with label sets drawn from the real label statistics: "
                    "OUT/train/, OUT/test/, train.csv, train_clean_labels.csv, test.csv, "
                    "test_labels.csv, synth.json. Same --seed, same bytes. --style picks how the "
                    "lab, cell lines and microscope look (docs/synth.md).",
        example="protloc synth data/synth --n-train 2000 --n-test 500 --seed 0 --style widefield-20x")
    p.add_argument("out", nargs="?", help="output folder (new or empty; see --overwrite)")
    p.add_argument("--n-train", type=positive_int, default=1000, help="number of training images")
    p.add_argument("--n-test", type=nonneg_int, default=250, help="number of test images")
    p.add_argument("--seed", type=seed, default=0, help="random seed (ids, labels and pixels)")
    p.add_argument("--size", default=128, help="image side in pixels",
                   type=integer(min=16, max=2048, expected="an integer 16..2048", fix="e.g. --size 128"))
    p.add_argument("--format", default="rgb", choices=("rgb", "hpa-channels"),
                   help="rgb: <id>.png; hpa-channels: <id>_red|green|blue|yellow.png")
    p.add_argument("--style", default="default",
                   help="image style: " + ", ".join(style_names()) + " (a new style per image); "
                        "a comma list mixes styles; with --gallery, 'all' draws every class in every style")
    p.add_argument("--difficulty", default="medium", type=from_function(_difficulty, "difficulty"),
                   help="0..1 or easy|medium|hard: noise, dimness, blur, pattern ambiguity")
    p.add_argument("--label-noise", default=0.02,
                   type=number(min=0, max=0.5, expected="a probability 0..0.5",
                               fix="e.g. --label-noise 0.02 (0 for clean labels)"),
                   help="probability that a training label set gets one wrong edit")
    p.add_argument("--workers", type=positive_int, default=None, help="processes (default: min(2, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty OUT folder")
    p.add_argument("--gallery", metavar="PNG", default=None,
                   help="also save a per-class gallery image (OUT may then be omitted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    declare_paths(p, OutDir("out", "output folder", "OUT"), OutFile("gallery"))
    p.set_defaults(func=run)


def _difficulty(text):
    from protloc.synth.dataset import parse_difficulty

    return parse_difficulty(text)


def run(args) -> int:
    from protloc.core.errors import InputError
    from protloc.synth.dataset import make_dataset, save_gallery, save_style_gallery
    from protloc.synth.styles import get_style

    difficulty = args.difficulty
    if args.out is None and args.gallery is None:
        raise InputError("protloc synth: expected an output folder OUT (or --gallery PNG), got neither",
                         fix="e.g. protloc synth data/synth --n-train 1000 --n-test 250")
    every_style = args.style.strip().lower() == "all"
    if every_style and (args.out is not None or args.gallery is None):
        raise InputError("--style all", expected="--gallery PNG without OUT", got="a dataset",
                         fix="name one style (or a comma list) for a dataset")
    if not every_style:
        get_style(args.style)  # an unknown name stops here, before any work
    if args.out is not None:
        s = make_dataset(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                         size=args.size, fmt=args.format, difficulty=difficulty,
                         label_noise=args.label_noise, workers=args.workers,
                         progress=not args.no_progress, overwrite=args.overwrite, style=args.style)
        print(f"wrote {s['n_train']} train + {s['n_test']} test images ({s['format']}, {s['size']}px, "
              f"difficulty {s['difficulty']:g}, style {s['style']}) to {s['out']} in {s['seconds']:.1f} s "
              f"({s['images_per_s']} images/s); {s['n_noisy_train_labels']} noisy train labels",
              file=sys.stdout)
    if args.gallery is not None:
        if every_style:
            path = save_style_gallery(args.gallery, size=args.size, seed=args.seed, difficulty=difficulty)
        else:
            path = save_gallery(args.gallery, size=args.size, seed=args.seed, difficulty=difficulty,
                                style=args.style)
        print(f"wrote gallery {path}")
    return 0
