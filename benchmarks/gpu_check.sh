#!/usr/bin/env bash
# One-GPU check of pre-training, in under 8 minutes: prints one table.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default runs/gpu_check (rows as JSON lines there)
#
# 1. pre-training steps (clip4vla.train.loop.Stepper, random weights and inputs, every tower trained)
#    at ViT-B/32 and ViT-L/14 size under torchrun with NCCL: bf16 and fp16 with train.strategy=ddp,
#    bf16 with train.strategy=fsdp, and bf16 with train.compile=true; samples/s, first-step time,
#    torch.cuda.max_memory_allocated next to scripts/plan_memory.py's estimate of it
#    (benchmarks/gpu_pretrain_step.py);
# 2. one resumed step per strategy: scripts/pretrain.py on a small synthetic set (tiny model) for 2
#    steps with a checkpoint per step, then --resume to step 3.
# With one process (NPROC=1, the default) the trainer runs single-process: DDP does not wrap and FSDP
# has nothing to shard (the "sharded" column says so); NPROC=8 on an 8-GPU machine shards for real.
# A run the config does not know (train.compile before it exists) is n/a; bf16 on a GPU without it
# (V100) is skipped. Knobs (environment): NPROC=1 BATCH_B32=16 BATCH_L14=4 STEPS=5 BUDGET_S=450.
# DRY_RUN=1 runs the same script on the CPU with the tiny model (tests the script, measures nothing).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUT=${1:-runs/gpu_check}
NPROC=${NPROC:-1}
BATCH_B32=${BATCH_B32:-16}
BATCH_L14=${BATCH_L14:-4}
STEPS=${STEPS:-5}
BUDGET_S=${BUDGET_S:-450}  # the whole check; every phase gets at most what is left of it
PYTHON=${PYTHON:-python}

DRY_RUN=${DRY_RUN:-0}
die() { echo "gpu_check: error: $*" >&2; exit 2; }

# --- a GPU first: everything below needs one -------------------------------------------------------
if ((DRY_RUN)); then
  DEVICE=cpu B32=tiny L14=tiny STEP_ARGS=(--device cpu --frames 2 --segments 2)
else
  DEVICE=cuda B32=ViT-B-32 L14=ViT-L-14 STEP_ARGS=()
  command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
  nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi finds no GPU (driver not loaded, or no device visible)"
  "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "torch.cuda.is_available() is False (a CPU-only torch build, or CUDA_VISIBLE_DEVICES hides the GPU)"
fi
command -v torchrun >/dev/null 2>&1 || die "torchrun not found (it comes with torch: activate the environment)"

mkdir -p "$OUT" || die "cannot create $OUT"
rm -f "$OUT/steps.jsonl" "$OUT/resume.jsonl" "$OUT"/steps_*.log
if ((DRY_RUN)); then
  echo "dry run on the CPU (tiny model): nothing here is a GPU measurement" | tee "$OUT/gpu.txt"
  HALF=bf16
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
  "$PYTHON" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 supported: {torch.cuda.is_bf16_supported()}')"
  HALF=$("$PYTHON" -c "import torch; print('bf16' if torch.cuda.is_bf16_supported() else 'fp16')")
fi

left() {  # seconds left of the budget, at most $1
  local rest=$((BUDGET_S - SECONDS))
  ((rest > $1)) && rest=$1
  ((rest < 1)) && rest=1
  echo "$rest"
}

steps() {  # backbone batch runs max_seconds
  local log="$OUT/steps_$1_${3//[:,]/_}.log"
  echo "== steps: $1, batch $2 per rank, runs $3 (at most $(left "$4") s)"
  timeout --kill-after=10 "$(left "$4")" torchrun --standalone --nproc_per_node="$NPROC" \
    benchmarks/gpu_pretrain_step.py --backbone "$1" --batch "$2" --runs "$3" --steps "$STEPS" --warmup 2 \
    "${STEP_ARGS[@]}" --json-out "$OUT/steps.jsonl" >"$log" 2>&1
  local rc=$?
  grep '^ROW ' "$log" | cut -c5- | "$PYTHON" -c \
    "import json,sys; [print('   ', r['name'], r['status'][:150], f\"{r['samples_per_s']:.1f} samples/s\" if 'samples_per_s' in r else '') for r in map(json.loads, sys.stdin)]"
  ((rc == 0)) || echo "   (exit $rc: timed out or failed; see $log)"
}

resume() {  # strategy max_seconds
  local run="$OUT/resume_$1" started=$SECONDS
  local common=(--set "train.output_dir=$run" --set "data.synthetic.root=$OUT/synthetic" --set data.synthetic.clips=40
    --set "train.batch_size=$((4 * NPROC))" --set train.checkpoint_every_steps=1 --set "train.strategy=$1"
    --set "train.precision=$HALF" --set "train.device=$DEVICE")
  echo "== resume: train.strategy=$1, 2 steps then --resume to step 3"
  rm -rf "$run"
  local status="ok"
  timeout --kill-after=10 "$(left "$2")" torchrun --standalone --nproc_per_node="$NPROC" scripts/pretrain.py \
    "${common[@]}" --set train.max_steps=2 >"$run.first.log" 2>&1 || status="first run failed (see $run.first.log)"
  if [[ $status == ok ]]; then
    timeout --kill-after=10 "$(left "$2")" torchrun --standalone --nproc_per_node="$NPROC" scripts/pretrain.py \
      --resume "${common[@]}" --set train.max_steps=3 >"$run.resume.log" 2>&1 || status="resume failed (see $run.resume.log)"
  fi
  STATUS="$status" STRATEGY="$1" RUN="$run" SECONDS_USED=$((SECONDS - started)) "$PYTHON" - >>"$OUT/resume.jsonl" <<'EOF'
import json, os
from pathlib import Path

run, status = Path(os.environ["RUN"]), os.environ["STATUS"]
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
resumed = any(r.get("event") == "resume" and r.get("step") == 2 for r in rows)
step3 = [r for r in rows if r.get("step") == 3 and "loss" in r]
if status == "ok" and not (resumed and step3 and any((run / "checkpoints").glob("ckpt_000003*"))):
    status = "resumed run did not log a resume at step 2, a step-3 loss and a step-3 checkpoint"
print(json.dumps({"strategy": os.environ["STRATEGY"], "status": status, "seconds": int(os.environ["SECONDS_USED"]),
                  "loss_step3": step3[0]["loss"] if step3 else None}))
EOF
  tail -n 1 "$OUT/resume.jsonl" | sed 's/^/    /'
}

# cheapest and most telling first; compilation (the slowest to start) last
steps "$B32" "$BATCH_B32" "bf16,fp16,bf16:fsdp" 100
resume ddp 50
resume fsdp 50
steps "$L14" "$BATCH_L14" "bf16,fp16,bf16:fsdp" 130
steps "$B32" "$BATCH_B32" "bf16:compile" 60
steps "$L14" "$BATCH_L14" "bf16:compile" 90

echo
OUT="$OUT" "$PYTHON" - <<'EOF'
import json, os
from pathlib import Path

out = Path(os.environ["OUT"])
read = lambda name: [json.loads(l) for l in (out / name).read_text().splitlines()] if (out / name).exists() else []
print(f"GPU: {(out / 'gpu.txt').read_text().strip()}")
print("| backbone | run | strategy (sharded) | compiled graphs | batch/rank | samples/s | step s (first) | peak GiB | estimate GiB | status |")
print("|" + "---|" * 10)
f = lambda x, p=2: "-" if x is None else f"{x:.{p}f}"
for r in read("steps.jsonl"):
    sharded = "" if "sharded" not in r else (" (yes)" if r["sharded"] else " (no)")
    print(f"| {r['backbone']} | {r['name']} | {r['strategy']}{sharded} | {r.get('compiled', '-')} | {r['batch']} | "
          f"{f(r.get('samples_per_s'), 1)} | {f(r.get('step_s'), 3)} ({f(r.get('first_step_s'), 1)}) | "
          f"{f(r.get('peak_gib'))} | {f(r.get('estimate_gib'))} | {r['status'][:120]} |")
for r in read("resume.jsonl"):
    print(f"| tiny (synthetic) | resume 2 -> 3 | {r['strategy']} | - | 4 | - | - | - | - | {r['status']} "
          f"(loss at step 3: {f(r['loss_step3'], 4)}, {r['seconds']} s) |")
print("\nestimate GiB: clip4vla.train.memory_plan (scripts/plan_memory.py) without its assumed CUDA context; "
      "a run missing from the table timed out (see the logs in this folder)")
EOF
echo "total: ${SECONDS} s"
