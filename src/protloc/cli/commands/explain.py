"""``protloc explain RUN IMAGE [--class NAME] [--out PNG]``: Grad-CAM heatmaps for one image."""

from __future__ import annotations

from pathlib import Path

from protloc.cli.main import new_command
from protloc.cli.options import InDir, OutFile, declare_paths, device, folds, run_folder


def register(sub) -> None:
    p = new_command(sub, "explain", help="Grad-CAM: show which pixels made the model predict each class",
                    example="protloc explain runs/r1 cell.png --out cell_explain.png",
                    description="Run the run's fold ensemble on one image and draw a Grad-CAM heatmap per "
                                "class (every predicted class by default, else the most probable one): "
                                "the image, the heatmap over the composite, and over the protein (green) "
                                "channel, titled with probability vs threshold. For HPA channel files "
                                "give --images DIR --id ID instead of IMAGE.")
    p.add_argument("run", help="run folder (made by `protloc train`)")
    p.add_argument("image", nargs="?", default=None, help="image file (PNG/JPEG/TIFF)")
    p.add_argument("--images", default=None, help="image folder (with --id; e.g. HPA <id>_green.png files)")
    p.add_argument("--id", dest="image_id", default=None, help="image id in --images")
    p.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME",
                   help="class to explain (name or number; repeatable). Default: the predicted classes")
    p.add_argument("--out", default=None, help="PNG to write; None means <image id>_explain.png in the current folder")
    p.add_argument("--folds", default=None, type=folds, help="comma-separated fold numbers (default: all)")
    p.add_argument("--device", default=None, type=device, help="cpu, cuda, cuda:N (default: cuda if available)")
    declare_paths(p, run_folder(), InDir("images", "image folder"), OutFile("out"))
    p.set_defaults(func=run)


def read_input(pred, image=None, images=None, image_id=None):
    """(uint8 image as the run sees it, display id) from IMAGE or --images/--id."""
    from protloc.core.errors import InputError
    from protloc.core.paths import check_image_id
    from protloc.io import images as imageio

    pre = pred.preprocessing
    if image is not None and (images or image_id):
        raise InputError("explain input", expected="IMAGE or --images DIR --id ID",
                         got="both", fix="pass only one of them")
    if image is not None:
        path = Path(image)
        if not path.is_file() and not (pre.fmt == "hpa-channels" and imageio.hpa_channel_path(
                path.parent, path.name, "green")):
            from protloc.core.paths import describe

            what = "not found" if describe(path) == "missing" else describe(path)
            raise InputError("IMAGE", expected="an existing image file", got=f"{str(path)!r} ({what})",
                             fix="check the path, or use --images DIR --id ID")
        return pred.read_file(path), path.stem if path.is_file() else path.name
    if not (images and image_id):
        raise InputError("explain input", expected="IMAGE or --images DIR --id ID",
                         got="neither" if not (images or image_id) else "only one of --images/--id",
                         fix="e.g. `protloc explain RUN cell.png`")
    check_image_id(str(image_id), where="--id")  # an id names a file inside --images, never a path
    return pred.read_file(Path(images) / str(image_id)), str(image_id)


def run(args) -> int:
    from protloc.core.atomic import write_bytes
    from protloc.core.runfolder import RunFolder
    from protloc.inference.predictor import Predictor
    from protloc.reports.explain import explain_image, render_explanation, resolve_classes

    RunFolder(args.run).check()
    pred = Predictor.from_run(args.run, folds=args.folds, device=args.device, engine="torch")  # Grad-CAM
    if args.classes:  # check names before reading the image
        resolve_classes(args.classes, list(pred.preprocessing.classes))
    img, iid = read_input(pred, args.image, args.images, args.image_id)
    ex = explain_image(pred, pred.preprocessing, img, classes=args.classes)
    out = Path(args.out) if args.out else Path(f"{iid}_explain.png")
    write_bytes(out, render_explanation(img, ex, preprocessing=pred.preprocessing, as_png=True))
    for e in ex:
        mark = ">=" if e["prob"] >= e["threshold"] else "<"
        print(f"{e['name']}: p={e['prob']:.3f} {mark} threshold {e['threshold']:.3f}")
    print(f"wrote {out}")
    return 0
