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
                     "--benchmark_repetitions=5", "--benchmark_enable_random_interleaving=true",
                     "--benchmark_report_aggregates_only=true", *extra])
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


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def tresnet_rows(build, baseline_dir, min_time):
    """TResNet float32, 2 threads: asl's fused model and training step against the CPU peers of
    ../shared/bench (PyTorch eager, TorchScript frozen + optimize_for_inference, ONNX Runtime running asl's
    own export of the same model, PyTorch's training step), all in this invocation."""
    asl = os.path.join(build, "asl")
    binary = os.path.join(build, "bench", "tresnet_bench")
    modules = os.path.join(HERE, "..", ".deps", "ort", "node_modules")
    if not (os.path.exists(asl) and os.path.exists(binary)):
        return []
    ref = os.path.join(baseline_dir, "ref_tresnet.py")
    peers = {}  # (model, size, batch) -> {path: images/s}

    def add(model, size, batch, path, ips):
        # The best of the rounds: this machine's speed drifts (other tenants), the best is each path's own.
        d = peers.setdefault((model, size, batch), {})
        d[path] = max(d.get(path, 0.0), ips)

    ours = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(ROUNDS):
            peer_round(asl, ref, modules, baseline_dir, tmp, add)
            _, times = google_benchmark(binary, min_time, ["--benchmark_filter=eval_fused_cl_fp32|train_step_fp32"])
            for k, t in times.items():
                ours[k] = min(ours.get(k, t), t)
    return tresnet_table(peers, ours)


# Peers and asl run alternately this many times; every path's best round is kept.
ROUNDS = 3


def peer_round(asl, ref, modules, baseline_dir, tmp, add):
    for model, size, batches, train in (("tresnet_m", 224, "1,16", True), ("tresnet_l", 448, "1", False)):
        cmd = ["/usr/bin/python3", ref, "time", "--model", model, "--size", str(size), "--batch", batches,
               "--threads", "2", "--seconds", "5", "--json"] + (["--train"] if train else [])
        for j in json_lines(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout):
            add(model, size, int(j["batch"]), j["path"], j["images_per_s"])
        if not os.path.isdir(os.path.join(modules, "onnxruntime-node")):
            continue
        ckpt, onnx = os.path.join(tmp, f"{model}.pth"), os.path.join(tmp, f"{model}_{size}.onnx")
        if not os.path.exists(onnx):
            subprocess.run(["/usr/bin/python3", ref, "random", ckpt, "--model", model, "--num-classes", "80",
                            "--layout", "published"], check=True, capture_output=True)
            subprocess.run([asl, "export", ckpt, onnx, "--image-size", str(size)], check=True, capture_output=True)
        out = subprocess.run(["node", os.path.join(baseline_dir, "ort_run.js"), "time", onnx, "--size", str(size),
                              "--batch", batches, "--threads", "2", "--seconds", "5", "--json", "--modules",
                              modules], check=True, capture_output=True, text=True).stdout
        for j in json_lines(out):
            add(model, size, int(j["batch"]), "onnxruntime", j["images_per_s"])


def tresnet_table(peers, ours):
    mine = {("tresnet_m", 224, 1): ours.get("tresnet_m_eval_fused_cl_fp32/batch:1"),
            ("tresnet_m", 224, 16): ours.get("tresnet_m_eval_fused_cl_fp32/batch:16"),
            ("tresnet_l", 448, 1): ours.get("tresnet_l448_eval_fused_cl_fp32/batch:1")}
    rows = [f"TResNet float32, 2 threads: best of {ROUNDS} alternating rounds of every path"]
    for (model, size, batch), t in mine.items():
        p = peers.get((model, size, batch), {})
        if t is None:
            continue
        ips = batch / t
        row = f"{model} {size} fp32 batch {batch:2d}  asl fused {ips:6.1f} images/s"
        for path in ("eager_fp32", "torchscript_fp32", "onnxruntime"):
            if path in p:
                row += f"  {path.replace('_fp32', '')} {p[path]:6.1f} ({ips / p[path]:.2f}x)"
        best = max((p[k] for k in ("torchscript_fp32", "onnxruntime") if k in p), default=None)
        if best:
            row += f"  vs best peer {ips / best:.2f}x"
        rows.append(row)
    t = ours.get("tresnet_m_train_step_fp32/batch:16")
    py = peers.get(("tresnet_m", 224, 16), {}).get("train_step_fp32")
    if t is not None and py:
        rows.append(f"tresnet_m 224 fp32 train step batch 16  asl {16 / t:6.2f} images/s  PyTorch eager {py:6.2f}  "
                    f"{16 / t / py:.2f}x")
    return rows


def distributed_rows(build, baseline_dir, min_time):
    """Data-parallel training step on this machine (TResNet-M 224, batch 16 per worker): 1 worker x 2
    threads against 2 workers x 1 thread, and the all-reduce's cost and the part the backward hides."""
    binary = os.path.join(build, "bench", "dist_bench")
    if not os.path.exists(binary):
        return []
    rows, runs = [], {}
    for workers, threads in ((1, 2), (2, 1)):
        j = json_lines(subprocess.run([binary, "--workers", str(workers), "--threads", str(threads), "--steps", "3"],
                                      check=True, capture_output=True, text=True).stdout)[-1]
        runs[workers] = j
        row = (f"data-parallel {j['model']} {j['image_size']} batch {j['batch_per_worker']}/worker  {workers} worker(s) x "
               f"{threads} thread(s)  {j['images_per_s']:6.2f} images/s  step {j['step_s']:.2f} s")
        if workers > 1:
            row += (f"  all-reduce of {j['grad_mb']:.0f} MB alone {j['allreduce_alone_s'] * 1e3:.0f} ms, exposed "
                    f"{j['allreduce_exposed_s'] * 1e3:.0f} ms ({j['overlap'] * 100:.0f} % hidden by the backward), backward skew "
                    f"{j['backward_skew_s'] * 1e3:.0f} ms")
        rows.append(row)
    if 1 in runs and 2 in runs:
        rows.append(f"data-parallel 2x1 vs 1x2: {runs[2]['images_per_s'] / runs[1]['images_per_s']:.2f}x")
    return rows


GROUPS = {"loss": loss_rows, "metrics": metrics_rows, "tresnet": tresnet_rows, "distributed": distributed_rows}


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
