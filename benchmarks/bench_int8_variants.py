"""int8 variants of a run's ONNX model (issue 13): which layers stay fp32, the macro-F1 change on
held-out out-of-fold images (the gate of ``protloc export --int8``: thresholds fitted on fp32's
probabilities of the other half of the images, ``cross_fitted_f1``; also at the run's thresholds,
which were fitted on these images and flatter fp32), the mAP change and probability differences
(threshold-free), and images/s on 1 thread (median of 5 timed passes).

    python benchmarks/bench_int8_variants.py demo_out/run   # -> benchmarks/results/int8_variants.json
    python benchmarks/bench_int8_variants.py RUN OUT.json   # another run, another file

The variant protloc uses (the first quarter of the convolutions in fp32) was chosen on the demo
run (a selection style); ``int8_variants_heldout.json`` reports it on a held-out style's run.
"""
import json, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, onnx
from onnxruntime.quantization.shape_inference import quant_pre_process
from protloc.core.runfolder import RunFolder
from protloc.core.metrics import average_precision, macro_f1
from protloc.core.thresholds import cross_fitted_f1
mean_average_precision = lambda y, p: float(np.nanmean(average_precision(y, p)))
from protloc.inference import onnx as ox

rf = RunFolder(sys.argv[1]); fp32 = rf.onnx_path
WORK = Path(tempfile.mkdtemp(prefix="int8-"))
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent / "results" / "int8_variants.json"
folds = [int(p.stem[4:]) for p in sorted(rf.models_dir.glob("fold*.pt"))]
pre = rf.preprocessing()
cal_ids, ev_ids, y, ev_folds = ox._held_out(rf, folds, 256)
cal = pre.normalize(ox._read_ids(rf, cal_ids, pre))
imgs = ox._read_ids(rf, ev_ids, pre)
col = {f: j for j, f in enumerate(folds)}; pick = np.array([col[int(f)] for f in ev_folds])
rule = rf.thresholds()
prep = WORK / "prep.onnx"
quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
m = onnx.load(str(prep))
convs = [n for n in m.graph.node if n.op_type == "Conv"]
def group(n): return next((a.i for a in n.attribute if a.name == "group"), 1)
dw = [n.name for n in convs if group(n) > 1]
first = [convs[0].name]
heads = [n.name for n in m.graph.node if n.op_type in ("Gemm", "MatMul")]
print(len(convs), "convs,", len(dw), "depthwise; head", heads, file=sys.stderr)
x = pre.normalize(imgs)
def evaluate(path):
    sess, _ = ox.load_onnx(path, meta={}, threads=1)
    run = lambda: np.concatenate([sess.run(["fold_probs"], {"input": x[s:s + 64]})[0] for s in range(0, len(x), 64)])
    fp = run(); times = []
    for _ in range(5):
        t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
    return fp[np.arange(len(x)), pick], len(x) / float(np.median(times))
res = {"run": str(rf.root), "n_eval": len(ev_ids), "n_calib": len(cal_ids)}
p32, ips = evaluate(fp32)
res["fp32"] = {"macro_f1_at_run_thresholds": float(macro_f1(y, rule.apply(p32))), "mAP": float(mean_average_precision(y, p32)),
               "images_per_s_1thread": ips}
print("fp32", res["fp32"], file=sys.stderr)
half = len(convs) // 2
variants = {"all": [], "fp32_depthwise": dw, "fp32_first_head": first + heads, "fp32_depthwise_first_head": dw + first + heads,
            "fp32_first_quarter_convs": ox.early_convs(prep),   # protloc's choice (INT8_FP32_CONV_SHARE)
            "fp32_first_half_convs": [n.name for n in convs[:half]]}
for name, excl in variants.items():
    out = WORK / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ox.quantize_qdq(prep, out, cal, keep_fp32=excl)  # protloc's own method, these nodes in fp32
    p8, ips = evaluate(out)
    xf = cross_fitted_f1(y, p32, p8, method=rule.method or "f1", at_least_one=rule.at_least_one)
    res[name] = {"macro_f1_change": xf["change"][0], "macro_f1_change_sd": xf["change_sd"][0],
                 "macro_f1_fp32": xf["f1"][0], "macro_f1_int8": xf["f1"][1],
                 "macro_f1_change_at_run_thresholds": float(macro_f1(y, rule.apply(p8))) - res["fp32"]["macro_f1_at_run_thresholds"],
                 "mAP_change": float(mean_average_precision(y, p8)) - res["fp32"]["mAP"],
                 "mean_abs_prob_diff": float(np.abs(p8 - p32).mean()), "max_abs_prob_diff": float(np.abs(p8 - p32).max()),
                 "images_per_s_1thread": ips, "speedup": ips / res["fp32"]["images_per_s_1thread"], "excluded": len(excl)}
    print(name, res[name], file=sys.stderr)
import os
res["machine"] = {"cores": os.cpu_count(), "load": os.getloadavg()}
json.dump(res, open(OUT, "w"), indent=1)
print("wrote", OUT, file=sys.stderr)
