"""``protloc export RUN``: write the fold ensemble (or one fold) as ONNX."""

from __future__ import annotations

from protloc.cli.main import new_command
from protloc.cli.options import OutFile, declare_paths, fold_or_all, positive_int, run_folder


def register(sub) -> None:
    p = new_command(sub, "export", help="export the trained ensemble to ONNX (onnxruntime)",
                    example="protloc export runs/r1 --onnx runs/r1/model.onnx --fold all",
                    description="Export the run's fold models as one ONNX graph with a dynamic batch: "
                                "input float32 NCHW normalised ((x/255-mean)/std), outputs sigmoid "
                                "probabilities averaged over folds ('probs') and per fold "
                                "('fold_probs'). Writes MODEL.onnx.json with the preprocessing next to "
                                "it. `protloc predict` (engine auto) exports RUN/model.onnx by itself when it is "
                                "missing or stale; --int8 adds a quantised copy, checked on held-out images.")
    p.add_argument("run", help="run folder (made by `protloc train`)")
    p.add_argument("--onnx", default=None, help="output .onnx file; RUN/model.onnx if not given")
    p.add_argument("--fold", default="all", type=fold_or_all, help="fold number to export, or 'all' for the ensemble")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version (7-20 with this exporter)")
    p.add_argument("--int8", action="store_true",
                   help="also write the int8 model (MODEL.int8.onnx): onnxruntime static quantisation calibrated "
                        "on the run's training images; its macro-F1 change on held-out images is recorded in "
                        "MODEL.onnx.json, and predict uses it only when the drop is <= 0.005")
    p.add_argument("--calib-images", type=positive_int, default=256,
                   help="training images that calibrate the int8 activations (with --int8)")
    declare_paths(p, run_folder(), OutFile("onnx"))
    p.set_defaults(func=run)


def run(args) -> int:
    from protloc.inference.onnx import export_onnx, meta_path

    info = export_onnx(args.run, args.onnx, folds=args.fold, opset=args.opset, int8=args.int8,
                       calib_images=args.calib_images, progress=True)
    print(f"wrote {info['path']} (folds {info['folds']}) and {meta_path(info['path']).name}; "
          f"onnxruntime vs torch max |diff| = {info['max_abs_diff']:.2e}")
    q = info.get("int8")
    if q:
        verdict = ("predict will use it" if q["usable"] else
                   f"predict keeps fp32 (drop > {q['max_f1_drop']})")
        print(f"wrote {q['path']}: held-out macro F1 {q['macro_f1_fp32']:.4f} (fp32) -> {q['macro_f1_int8']:.4f} "
              f"(int8), change {q['macro_f1_change']:+.4f}; {verdict}")
    return 0
