"""Pre-training step benchmark at ViT-B/32 size on CPU: speed, peak memory and MFU.

One step = ``clip4vla.train.loop.Stepper.train_step`` itself (the code training runs) with frozen
CLIP towers (paper default):
text ``[B, 32]`` and ``B x F`` frames through the frozen towers (no grad), ``2 x B x L`` audio
segments (clean + masked copy) through the trainable audio encoder, ``PretrainLoss``
(intra-modal on), backward, grad-norm clipping, AdamW. Random weights and inputs (speed does
not depend on the values; all masks full so every frame and segment is encoded).

Each configuration (fp32 / bf16 autocast x activation checkpointing off / on) runs in a fresh
subprocess, so its peak RSS (``VmHWM``) is its own. The parent measures the machine's matmul peak
(large square ``torch.mm``, fp32 and bf16, same thread count) and reports model FLOP utilisation
= analytic model FLOPs per step / step time / peak of the same dtype (``benchmarks/flops.py``;
cross-checked once against ``torch.utils.flop_counter.FlopCounterMode``).

    PYTHONPATH=. python benchmarks/pretrain_step.py [--batch 8 --frames 12 --segments 10
        --steps 2 --warmup 1 --threads T --configs fp32,fp32+ckpt,bf16,bf16+ckpt]
        [--wait-idle 600 --retries 3] [--json-out run.json] [--from-json run.json]

On a shared machine contention distorts everything (at half the cores a bf16 step took 3x as
long, not 2x): ``--wait-idle`` waits for idle CPUs before each configuration and ``--retries``
re-runs a configuration whose timed steps got < 93 % of the cores. Every step reports its
"cpu share" (CPU time / (wall x threads)); only rows near 1.00 are clean measurements.

``--prototypes`` applies speed-up experiments as monkeypatches (see PROTOTYPES); without it the
package code is measured as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from clip4vla.precision import PRECISION_DTYPES as DTYPES  # noqa: E402
from flops import TowerShape, pretrain_step_flops, tower_backward_flops, tower_forward_flops, vit_shape  # noqa: E402
from step_batch import WORDS, random_pretrain_batch  # noqa: E402

ALL_CONFIGS = ("fp32", "fp32+ckpt", "bf16", "bf16+ckpt")  # the default run
# train.compile: true, on request (compiling takes the warm-up steps)
KNOWN_CONFIGS = (*ALL_CONFIGS, "fp32+compile", "bf16+compile", "fp32+ckpt+compile", "bf16+ckpt+compile")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def config_precision(config: str) -> str:
    """``"bf16+ckpt"`` (or a result's ``"bf16+ckpt [prototypes]"``) -> ``"bf16"``."""
    return config.split(" ")[0].partition("+")[0]


# ---------------------------------------------------------------------------------- machine


def cpu_description() -> dict:
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", ""):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cpus": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS}}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def idle_fraction(window: float = 3.0) -> float:
    """Fraction of all CPUs' time spent idle over ``window`` seconds (from ``/proc/stat``)."""

    def read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields[:8])  # idle + iowait, total (without guest time)

    idle0, total0 = read()
    time.sleep(window)
    idle1, total1 = read()
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(max_wait: float, threshold: float = 0.9) -> float:
    """On a shared machine: wait (up to ``max_wait`` s) until the CPUs are ``threshold`` idle."""
    deadline = time.monotonic() + max_wait
    idle = idle_fraction()
    while idle < threshold and time.monotonic() < deadline:
        idle = idle_fraction()
    return idle


def matmul_peak(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> dict:
    """Best and median GFLOP/s of ``torch.mm`` on ``n x n`` matrices (one warm-up first)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times, cpu_times = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
        cpu_times.append((time.process_time() - c0) / torch.get_num_threads())
    flops = 2 * n**3
    return {
        "best": flops / min(times) / 1e9,
        "median": flops / statistics.median(times) / 1e9,
        # per CPU second the process got (divided by threads): comparable with the steps' "cpu" column
        "cpu": flops / min(cpu_times) / 1e9,
    }


def onednn_fp32_peak(n: int = 4096, reps: int = 5) -> dict | None:
    """fp32 GFLOP/s of the same product through oneDNN (a private op; None where it is missing).

    Reference only: torch's fp32 ``mm`` goes to MKL's sgemm, which on non-Intel CPUs does not
    take its AVX-512 path, so the MKL number can sit well below what the vector units do.
    """
    a, b, bias = torch.randn(n, n), torch.randn(n, n), torch.zeros(n)
    try:
        op = torch.ops.mkldnn._linear_pointwise
        op(a, b, bias, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    times, cpu_times = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        op(a, b, bias, "none", [], "")
        times.append(time.perf_counter() - t0)
        cpu_times.append((time.process_time() - c0) / torch.get_num_threads())
    return {"best": 2 * n**3 / min(times) / 1e9, "cpu": 2 * n**3 / min(cpu_times) / 1e9}


# ---------------------------------------------------------------------------------- memory


def rss_gib() -> dict:
    """Current and peak resident set size of this process (``/proc/self/status``)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(line.split()[1]) / 2**20  # kB -> GiB
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


# ---------------------------------------------------------------------------------- the step


def build(args, precision: str, ckpt: bool, compiled: bool = False):
    """The real pre-training task and optimiser step (``clip4vla.train.loop.Stepper``) at ViT-B/32."""
    from clip4vla.config import PretrainConfig, load_config
    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA
    from clip4vla.train.distributed import init_distributed
    from clip4vla.train.loop import Stepper
    from clip4vla.train.pretrain import PretrainTask

    config = load_config(PretrainConfig, None, [
        f"train.precision={precision}", f"train.batch_size={args.batch}", f"data.max_frames={args.frames}",
        f"audio.max_segments={args.segments}", "optim.lr=1e-7", "pretrain.intra_modal=true",
        f"train.compile={str(compiled).lower()}", f"model.grad_checkpointing={str(ckpt).lower()}",
    ])
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.vit_b_32(), audio_init="vision", use_type_token=True)
    model.freeze_clip(True)  # paper default: only the audio encoder trains
    model.set_grad_checkpointing(ckpt)
    task = PretrainTask(config, init_distributed(device="cpu"))
    task.setup(model)
    stepper = Stepper(config, task, model, task.dist, total_steps=1000)

    batch = random_pretrain_batch(args.batch, args.frames, args.segments)
    return stepper, batch


def measured(step: Callable[[], dict], threads: int) -> dict:
    """``step()``'s result with what the process spent on it: cpu share (CPU time / (wall x
    threads)), user and kernel seconds, page faults (fresh activation memory is mapped and zeroed
    by the kernel)."""
    use0, cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    result = step()
    wall = time.perf_counter() - wall0
    use1 = resource.getrusage(resource.RUSAGE_SELF)
    return {**result, "cpu_share": (time.process_time() - cpu0) / (wall * threads),
            "user_s": use1.ru_utime - use0.ru_utime, "sys_s": use1.ru_stime - use0.ru_stime,
            "minor_faults": use1.ru_minflt - use0.ru_minflt}


def run_steps(step: Callable[[], dict], warmup: int, timed: int, threads: int,
              describe: Callable[[dict], str]) -> list[dict]:
    """``warmup`` + ``timed`` calls of ``step``, each :func:`measured` and reported on stderr."""
    steps = []
    for i in range(warmup + timed):
        steps.append({**measured(step, threads), "warmup": i < warmup})
        print(f"  step {i} ({'warm-up' if i < warmup else 'timed'}): {describe(steps[-1])}", file=sys.stderr, flush=True)
    return steps


def one_step(stepper, batch) -> dict:
    """One optimiser step, exactly as training runs it (``Stepper.train_step``); its time (s)."""
    t0 = time.perf_counter()
    metrics = stepper.train_step([batch])
    return {"step": time.perf_counter() - t0, "loss": metrics["loss"]}


# ---------------------------------------------------------------------------------- prototypes
# Speed-up experiments, applied only with --prototypes (monkeypatches; the package is untouched).
# The default run measures the package code as it is.

# adopted since: "attn-matmul" (clip4vla.models.clip, for bf16 on a CPU) and the allocator
# settings (clip4vla.train.cpu_memory); "frozen-bf16" was not (3 %, and checkpoints would hold bf16
# copies of the frozen towers)
PROTOTYPES = ("frozen-bf16",)


def apply_prototypes(names: list[str], stepper, precision: str) -> list[str]:
    applied = [n for n in names if not (n == "frozen-bf16" and precision != "bf16")]
    if "frozen-bf16" in names and precision == "bf16":
        # frozen towers never update: cast their weights once instead of on every autocast call
        stepper.model.clip.to(torch.bfloat16)
    return applied


def run_config(args) -> None:
    """Child process: build, warm up, time ``args.steps`` steps, print one JSON line."""
    torch.set_num_threads(args.threads)
    precision, *options = args.config.split("+")
    rss_start = rss_gib()
    stepper, batch = build(args, precision, "ckpt" in options, "compile" in options)
    prototypes = [p for p in args.prototypes.split(",") if p]
    if prototypes:
        prototypes = apply_prototypes(prototypes, stepper, precision)
    rss_built = rss_gib()
    # the matmul peak of this dtype once more, right before the steps: on a shared machine the
    # parent keeps the best of all measurements
    peak = matmul_peak(DTYPES[precision], args.peak_size, reps=3)
    steps = run_steps(lambda: one_step(stepper, batch), args.warmup, args.steps, args.threads, lambda s: (
        f"[{args.config}] {s['step']:.1f} s, cpu share {s['cpu_share']:.2f}, "
        f"{s['minor_faults'] / 1e6:.2f} M page faults, {s['sys_s']:.1f} s system time"))
    result = {
        "config": args.config + "".join(f" [{p}]" for p in prototypes),
        "matmul_peak": peak,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "rss_start_gib": rss_start["VmRSS"],
        "rss_after_build_gib": rss_built["VmRSS"],
        "peak_rss_gib": rss_gib()["VmHWM"],
        "ru_maxrss_gib": rss_gib()["ru_maxrss"],
        "load_after": load_average(),
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------- FLOP check


def flop_check(args) -> None:
    """Child process: FlopCounterMode vs the analytic count, per item, at ViT-B/32 size.

    SDPA is forced to the math backend: the counter has no formula for the CPU flash kernel
    (``_scaled_dot_product_flash_attention_for_cpu``) and would miss the attention products.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from clip4vla.models.clip import CLIPConfig
    from clip4vla.models.clip4vla import CLIP4VLA

    torch.set_num_threads(args.threads)
    cfg = CLIPConfig.vit_b_32()
    model = CLIP4VLA.from_config(cfg, audio_init="vision", use_type_token=True)
    model.freeze_clip(True)
    n = 2
    text = torch.randint(1, 49406, (n, WORDS))
    text[:, -1] = 49407
    frames = torch.randn(1, n, 3, 224, 224)
    segments = torch.randn(1, n, 3, 224, 224)
    fmask = torch.ones(1, n, dtype=torch.bool)
    vision = vit_shape(cfg.vision_width, cfg.vision_layers, cfg.image_resolution, cfg.vision_patch_size,
                       cfg.embed_dim, 0)
    audio = vit_shape(cfg.vision_width, cfg.vision_layers, cfg.image_resolution, cfg.vision_patch_size,
                      cfg.embed_dim, 1)
    text_shape = TowerShape(cfg.transformer_width, cfg.transformer_layers, WORDS, output_dim=cfg.embed_dim)

    def counted(fn) -> int:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    rows = []
    rows.append(("text forward (per caption)", counted(lambda: model.encode_text(text)) / n,
                 sum(tower_forward_flops(text_shape).values())))
    rows.append(("frame forward (per frame)", counted(lambda: model.encode_video(frames, fmask)) / n,
                 sum(tower_forward_flops(vision).values())))
    holder = {}

    def audio_forward():
        holder["out"] = model.encode_audio(segments, fmask, "nb")[1].sum()

    rows.append(("audio forward (per segment)", counted(audio_forward) / n, sum(tower_forward_flops(audio).values())))
    rows.append(("audio backward (per segment)", counted(lambda: holder["out"].backward()) / n,
                 tower_backward_flops(audio)))
    out = [{"what": w, "counter": c, "analytic": a} for w, c, a in rows]
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------- parent


def child(args, extra: list[str]) -> dict | list:
    cmd = [sys.executable, __file__, *extra, "--batch", str(args.batch), "--frames", str(args.frames),
           "--segments", str(args.segments), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--prototypes", args.prototypes, "--peak-size", str(args.peak_size)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {' '.join(extra)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", default=",".join(ALL_CONFIGS), help=f"subset of {','.join(KNOWN_CONFIGS)}")
    parser.add_argument("--peak-size", type=int, default=4096, help="square matmul size for the peak")
    parser.add_argument("--skip-flop-check", action="store_true")
    parser.add_argument("--prototypes", default="",
                        help=f"speed-up experiments (monkeypatches, not package code): {','.join(PROTOTYPES)}")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="shared machine: wait up to this many seconds for >= 90%% idle CPUs before each config")
    parser.add_argument("--retries", type=int, default=0,
                        help="shared machine: re-run a config whose timed steps got < 93%% of the cores, keep the best")
    parser.add_argument("--json-out", help="also write the raw measurements here")
    parser.add_argument("--from-json", help="print the report of a saved run (no measuring)")
    parser.add_argument("--role", choices=("parent", "step", "flops"), default="parent", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "step":
        return run_config(args)
    if args.role == "flops":
        return flop_check(args)
    if args.from_json:
        return report(json.loads(Path(args.from_json).read_text()))

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in KNOWN_CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {KNOWN_CONFIGS}")
    unknown = [p for p in args.prototypes.split(",") if p and p not in PROTOTYPES]
    if unknown:
        parser.error(f"unknown prototypes {unknown}; choose from {PROTOTYPES}")
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}, {cpu['cpus']} logical CPUs; torch {torch.__version__}, threads {args.threads}")
    print("ISA flags: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu["flags"].items()))
    print(f"load average at start: {load_average()}")
    print(f"step: batch {args.batch}, {args.frames} frames, {args.segments} audio segments (x2: clean + masked), "
          f"{WORDS} words; {args.warmup} warm-up + {args.steps} timed steps per configuration\n")

    if not args.skip_flop_check:
        print("FLOP count cross-check (FlopCounterMode, SDPA math backend, vs benchmarks/flops.py), GFLOP per item:")
        for row in child(args, ["--role", "flops"]):
            print(f"  {row['what']:<30} counter {row['counter'] / 1e9:8.4f}   analytic {row['analytic'] / 1e9:8.4f}"
                  f"   ratio {row['counter'] / row['analytic']:.4f}")
        print()

    if args.wait_idle:
        wait_for_idle(args.wait_idle)
    # only the dtypes the chosen configs use: on a CPU without bf16 instructions one emulated
    # 4096^2 bf16 product takes minutes (~1 GFLOP/s on an AVX2-only EPYC)
    dtypes = {name: DTYPES[name] for name in dict.fromkeys(config_precision(c) for c in configs)}
    peaks = {name: matmul_peak(dt, args.peak_size) for name, dt in dtypes.items()}
    onednn = onednn_fp32_peak(args.peak_size)
    results = []
    for c in configs:
        best = None
        for attempt in range(1 + args.retries):
            if args.wait_idle:
                idle = wait_for_idle(args.wait_idle)
                print(f"  (machine {100 * idle:.0f} % idle before {c})", file=sys.stderr, flush=True)
            res = child(args, ["--role", "step", "--config", c])
            res["share"] = min(s["cpu_share"] for s in res["steps"] if not s["warmup"])
            if best is None or res["share"] > best["share"]:
                best = res
            if best["share"] >= 0.93:
                break
            print(f"  ({c}: contended, cpu share {res['share']:.2f}; attempt {attempt + 1} of {1 + args.retries})",
                  file=sys.stderr, flush=True)
        results.append(best)
    # the peak again after the runs: the machine is shared, keep the better of the two measurements
    for name, dt in dtypes.items():
        again = matmul_peak(dt, args.peak_size)
        peaks[name] = {k: max(peaks[name][k], again[k]) for k in again}
    for res in results:
        name = config_precision(res["config"])
        peaks[name] = {k: max(peaks[name][k], res["matmul_peak"][k]) for k in peaks[name]}
    again = onednn_fp32_peak(args.peak_size)
    if onednn and again:
        onednn = {k: max(onednn[k], again[k]) for k in again}
    run = {
        "args": {k: v for k, v in vars(args).items() if k not in ("role", "config", "json_out", "from_json")},
        "cpu": cpu,
        "env": {k: v for k, v in os.environ.items()
                if k == "LD_PRELOAD" or k.startswith(("MALLOC_", "GLIBC_TUNABLES", "MKL_", "OMP_", "KMP_"))},
        "peaks": peaks,
        "onednn_fp32_peak": onednn,
        "results": results,
        "load_end": load_average(),
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(run, indent=1))
    report(run)


def report(run: dict) -> None:
    """Print the peak, the FLOP budget and one table row per configuration."""
    from clip4vla.models.clip import CLIPConfig

    args, peaks = argparse.Namespace(**run["args"]), run["peaks"]
    cfg = CLIPConfig.vit_b_32()
    print(f"matmul peak ({args.peak_size}x{args.peak_size} torch.mm, {args.threads} threads, best over the run): "
          + ", ".join(f"{k} {v['best']:.0f} GFLOP/s wall (median {v['median']:.0f}), {v['cpu']:.0f} per CPU-s"
                      for k, v in peaks.items()))
    if run.get("onednn_fp32_peak"):
        ref = run["onednn_fp32_peak"]
        print(f"  reference: fp32 through oneDNN {ref['best']:.0f} GFLOP/s wall, {ref['cpu']:.0f} per CPU-s "
              "(torch's fp32 mm uses MKL sgemm; MFU below is against the torch.mm peak)")
    for key, value in run.get("env", {}).items():
        print(f"  environment: {key}={value}")
    flop_parts = pretrain_step_flops(cfg, args.batch, args.frames, args.segments, WORDS)
    print("model FLOPs per step: " + ", ".join(
        f"{k.replace('_', ' ')} {v / 1e12:.3f} T" for k, v in flop_parts.items() if k not in ("recompute", "hardware")))
    print("\nwall = measured wall clock (MFU vs the wall peak); cpu = CPU seconds / threads, an estimate of the "
          "unloaded time on a shared machine (MFU vs the per-CPU-s peak); cpu share = CPU time / (wall x threads), "
          "1.00 = the process had all its cores")
    print("\n| config | s/step wall (min) | s/step cpu | samples/s wall / cpu | peak RSS GiB (after build) "
          "| cpu share | model GFLOP/s wall / cpu | MFU % wall / cpu | HFU % cpu |")
    print("|" + "---|" * 9)
    summary = {}
    for res in run["results"]:
        precision, *options = res["config"].split(" ")[0].split("+")
        flops = pretrain_step_flops(cfg, args.batch, args.frames, args.segments, WORDS,
                                    grad_checkpointing="ckpt" in options)
        timed = [s for s in res["steps"] if not s["warmup"]]
        wall = statistics.mean(s["step"] for s in timed)
        best = min(s["step"] for s in timed)
        cpu = statistics.mean(s["step"] * s["cpu_share"] for s in timed)
        share = statistics.mean(s["cpu_share"] for s in timed)
        peak, peak_cpu = peaks[precision]["best"], peaks[precision]["cpu"]
        gf_wall, gf_cpu = flops["model"] / wall / 1e9, flops["model"] / cpu / 1e9
        mfu_wall, mfu_cpu = 100 * gf_wall / peak, 100 * gf_cpu / peak_cpu
        hfu_cpu = 100 * flops["hardware"] / cpu / 1e9 / peak_cpu
        summary[res["config"].split(" ")[0]] = {"wall": args.batch / wall, "cpu": args.batch / cpu, "mfu_wall": mfu_wall,
                                  "mfu_cpu": mfu_cpu}
        print(f"| {res['config']} | {wall:.1f} ({best:.1f}) | {cpu:.1f} | {args.batch / wall:.3f} / "
              f"{args.batch / cpu:.3f} | {res['peak_rss_gib']:.2f} ({res['rss_after_build_gib']:.2f}) | {share:.2f} | "
              f"{gf_wall:.0f} / {gf_cpu:.0f} | {mfu_wall:.1f} / {mfu_cpu:.1f} | {hfu_cpu:.1f} |")

    print(f"\nload average at end: {run['load_end']}")
    for ck in ("", "+ckpt"):
        if f"fp32{ck}" in summary and f"bf16{ck}" in summary:
            w = summary[f"bf16{ck}"]["wall"] / summary[f"fp32{ck}"]["wall"]
            c = summary[f"bf16{ck}"]["cpu"] / summary[f"fp32{ck}"]["cpu"]
            print(f"bf16 / fp32 samples/s{' (checkpointing)' if ck else ''}: {w:.2f}x wall, {c:.2f}x cpu "
                  "(target >= 2x)")
    for key in ("mfu_wall", "mfu_cpu"):
        name, value = max(((k, v[key]) for k, v in summary.items()), key=lambda kv: kv[1])
        print(f"best MFU ({key[4:]}): {value:.1f} % ({name}; target >= 35 %)")


if __name__ == "__main__":
    main()
