"""int8 variants of a run's ONNX model (issue 13): which layers stay fp32, the macro-F1 change on
held-out out-of-fold images (the gate of ``protloc export --int8``) and images/s on 1 thread.

    python benchmarks/bench_int8_variants.py demo_out/run   # -> benchmarks/results/int8_variants.json
"""
import json, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, onnx
from onnxruntime.quantization.shape_inference import quant_pre_process
from protloc.core.runfolder import RunFolder
from protloc.core.metrics import macro_f1
from protloc.inference import onnx as ox

rf = RunFolder(sys.argv[1]); fp32 = rf.onnx_path
WORK = Path(tempfile.mkdtemp(prefix="int8-"))
OUT = Path(__file__).resolve().parent / "results" / "int8_variants.json"
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
def evaluate(path):
    sess, _ = ox.load_onnx(path, meta={}, threads=1)
    x = pre.normalize(imgs)
    t0 = time.perf_counter()
    fp = np.concatenate([sess.run(["fold_probs"], {"input": x[s:s + 64]})[0] for s in range(0, len(x), 64)])
    dt = time.perf_counter() - t0
    probs = fp[np.arange(len(x)), pick]
    return float(macro_f1(y, rule.apply(probs))), len(x) / dt
res = {"run": str(rf.root), "n_eval": len(ev_ids), "n_calib": len(cal_ids)}
f, ips = evaluate(fp32); res["fp32"] = {"macro_f1": f, "images_per_s_1thread": ips}; print("fp32", f, ips, file=sys.stderr)
variants = {"all": [], "fp32_depthwise": dw, "fp32_first_head": first + heads, "fp32_depthwise_first_head": dw + first + heads}
for name, excl in variants.items():
    out = WORK / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ox.quantize_qdq(prep, out, cal, keep_fp32=excl)  # protloc's own method, these nodes in fp32
    f, ips = evaluate(out)
    res[name] = {"macro_f1": f, "change": f - res["fp32"]["macro_f1"], "images_per_s_1thread": ips, "excluded": len(excl)}
    print(name, res[name], file=sys.stderr)
import os
res["machine"] = {"cores": os.cpu_count(), "load": os.getloadavg()}
json.dump(res, open(OUT, "w"), indent=1)
print("wrote", OUT, file=sys.stderr)
