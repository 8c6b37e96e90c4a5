#!/usr/bin/python3
"""Runs asl's Google Benchmark programs and the Python baselines of ../shared/bench in one invocation
and prints one row per measurement with the speed-up over the baseline.

Usage: /usr/bin/python3 bench/run_benchmarks.py [--build build] [--min-time 0.5] [--baseline-dir DIR]
Standard library only; the baselines need Debian's python3-torch / python3-numpy (/usr/bin/python3).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def google_benchmark(binary, min_time, extra=()):
    # Medians of 5 repetitions: the Python baselines report medians too, and a median is not pulled by the
    # occasional slow stretch of a shared machine.
    data = run_json([binary, "--benchmark_format=json", f"--benchmark_min_time={min_time}",
                     "--benchmark_repetitions=5", "--benchmark_report_aggregates_only=true", *extra])
    times = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        times[b["run_name"].replace("/real_time", "")] = b["real_time"] * scale
    return data.get("context", {}), times


def fmt_time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:9.1f} us"
    return f"{seconds * 1e3:9.2f} ms"


def loss_rows(build, baseline_dir, min_time):
    binary = os.path.join(build, "bench", "loss_bench")
    if not os.path.exists(binary):
        return []
    _, ours = google_benchmark(binary, min_time)
    rows = []
    for c in (80, 9605):
        shape = f"128x{c}"
        base = run_json(["/usr/bin/python3", os.path.join(baseline_dir, "ref_loss.py"), "--n", "128", "--c", str(c),
                         "--reps", "50" if c == 80 else "10", "--threads", "2"])
        for what, key_py, key_ours in (("forward", "fwd_s", "fwd"), ("forward+backward", "fwd_bwd_s", "fwd_bwd")):
            py = base[key_py]
            for impl in ("composite", "fused"):
                t = ours[f"{impl}_{key_ours}/128/{c}"]
                label = "AsymmetricLoss" if impl == "composite" else "AsymmetricLossOptimized"
                rows.append(f"loss {what:17s} {shape:9s} {label:24s} {fmt_time(t)}  python {fmt_time(py)}  {py / t:.1f}x")
    return rows


def metrics_rows(build, baseline_dir, min_time):
    binary = os.path.join(build, "bench", "metrics_bench")
    if not os.path.exists(binary):
        return []
    _, ours = google_benchmark(binary, min_time)
    base = run_json(["/usr/bin/python3", os.path.join(baseline_dir, "ref_map.py"), "--n", "40137", "--c", "80",
                     "--reps", "3"])
    t = ours["mean_ap/40137/80"]
    py = base["map_s"]
    return [f"mAP              40137x80  mean_average_precision   {fmt_time(t)}  python {fmt_time(py)}  {py / t:.1f}x"]


def onnx_rows(build, baseline_dir, min_time):
    """TResNet-M at 224, float32: asl's fused model against ONNX Runtime running asl's own export of it."""
    asl = os.path.join(build, "asl")
    binary = os.path.join(build, "bench", "tresnet_bench")
    modules = os.path.join(HERE, "..", ".deps", "ort", "node_modules")
    if not (os.path.exists(asl) and os.path.exists(binary)):
        return []
    if not os.path.isdir(os.path.join(modules, "onnxruntime-node")):
        return ["onnx: onnxruntime-node is not installed (run scripts/setup.sh); ONNX Runtime rows skipped"]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, model = os.path.join(tmp, "tresnet_m.pth"), os.path.join(tmp, "tresnet_m.onnx")
        subprocess.run(["/usr/bin/python3", os.path.join(baseline_dir, "ref_tresnet.py"), "random", ckpt, "--model",
                        "tresnet_m", "--num-classes", "80", "--layout", "published"], check=True, capture_output=True)
        subprocess.run([asl, "export", ckpt, model, "--image-size", "224"], check=True, capture_output=True)
        out = subprocess.run(["node", os.path.join(baseline_dir, "ort_run.js"), "time", model, "--size", "224",
                              "--batch", "1,16", "--threads", "2", "--json", "--modules", modules],
                             check=True, capture_output=True, text=True).stdout
    ort = {}
    for line in out.splitlines():
        if line.strip().startswith("{"):
            j = json.loads(line)
            ort[int(j["batch"])] = j["images_per_s"]
    _, ours = google_benchmark(binary, min_time, ["--benchmark_filter=tresnet_m_eval_fused_cl_fp32"])
    rows = []
    for batch in (1, 16):
        t = ours.get(f"tresnet_m_eval_fused_cl_fp32/batch:{batch}")
        if t is None or batch not in ort:
            continue
        mine = batch / t
        rows.append(f"TResNet-M 224 fp32 batch {batch:2d}   asl fused {mine:6.1f} images/s   ONNX Runtime "
                    f"(asl export) {ort[batch]:6.1f} images/s   {mine / ort[batch]:.2f}x")
    return rows


GROUPS = {"loss": loss_rows, "metrics": metrics_rows, "onnx": onnx_rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--baseline-dir", default=os.path.join(HERE, "..", "..", "shared", "bench"))
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups: " + ", ".join(GROUPS))
    a = ap.parse_args()
    if not os.path.isdir(a.baseline_dir):
        sys.exit(f"baseline folder not found: {a.baseline_dir}")
    print("asl benchmarks (2 threads; ratio = Python baseline time / asl time, higher is better)")
    asl = os.path.join(a.build, "asl")
    if os.path.exists(asl):
        # The CPU as asl's kernels see it (ISAs after any DNNL_MAX_CPU_ISA / ATEN_CPU_CAPABILITY cap).
        version = subprocess.run([asl, "--version"], check=True, capture_output=True, text=True).stdout
        for line in version.splitlines()[1:]:
            print(line, flush=True)
    for name in a.only.split(","):
        if name not in GROUPS:
            sys.exit(f"--only: unknown group {name!r} (known: {', '.join(GROUPS)})")
        for row in GROUPS[name](a.build, a.baseline_dir, a.min_time):
            print(row, flush=True)


if __name__ == "__main__":
    main()
