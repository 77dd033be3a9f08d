"""One pre-training optimiser step of the authors' *released* CLIP4VLA code, fp32 on CPU.

The counterpart of ``benchmarks/pretrain_step.py`` (our step): same machine, same batch shapes
(``step_batch.random_pretrain_batch``: text ``[B, 32]``, ``B x F`` frames, ``2 x B x L`` audio
segments of 224x224, clean + masked), ViT-B/32 with random weights, ``--threads`` CPU threads.
The released code is imported from ``--released-code`` (nothing of it is copied here):

    mkdir -p /tmp/released_clip4vla && git --git-dir=/work/.mirror/ludanruan+CLIP4VLA/repo archive HEAD \\
        | tar -x -C /tmp/released_clip4vla
    python benchmarks/released_step.py --released-code /tmp/released_clip4vla \\
        [--batch 8 --frames 12 --segments 10 --steps 2 --warmup 1 --threads 2]
        [--freeze-layer-num -1|13] [--no-ddp] [--wait-idle 600]

(``--released-code`` may also name the bare git directory itself; it is then extracted to a
temporary directory with ``git archive HEAD``.)

What is built (as ``main_pretrain.py`` + ``scripts/pretrain_howto100m_s1.sh`` build it):
``modules.modeling.AudioClip.from_pretrained(state_dict=None, task_config=args)`` with the
script's flags (``--do_pretrain --with_self_supervised --loss_func tav_nce --with_control_token 2
--max_words 32 --max_frames 12 --max_audio_length 10 --lr 1e-7 --coef_lr 1 --freeze_layer_num -1``,
parser defaults otherwise: ViT-B/32, ``task_type caption``, ``retrieval_finetune feat_avg``), the
optimiser of ``util.prep_optimizer_clip`` (BertAdam, warmup_cosine, weight decay 0.2 on CLIP
weights, per-parameter grad clipping at 1.0) and DDP around the model, as there. Note that the
script trains *all* CLIP parameters (``--freeze_layer_num -1``: "Training all clip params");
``--freeze-layer-num 13`` is the released code's own "Freeze all clip params" switch, which matches
our frozen-tower step.

One step = the fp32 branch of ``main_pretrain.train_epoch`` (gradient_accumulation_steps 1):
``loss, _ = model(**inputs)``; ``loss.backward()``; the NaN assert over ``model.state_dict()``;
``clip_grad_norm_(model.parameters(), 1.0)``; ``optimizer.step()``; the NaN assert again;
``optimizer.zero_grad()``. Timed in this process (``fwd`` / ``bwd`` / ``opt`` = everything after
backward, of which ``check`` = the two NaN asserts); one JSON line at the end.

Work that differs from our step: by default the text and vision towers train too (backward through
``B x F`` frames and ``B`` captions, 252 M parameters in BertAdam instead of the audio tower's 88 M);
loss = t-a + 2 x a-v + t-t + v-v (symmetric NCE) + audio clean/masked SimCLR (t-v computed for the
log only); two audio passes (clean + masked, 51 tokens each, as ours); no MLM / cross encoder in
the stage-one forward (the 4-layer cross encoder and the MLM head are built, ``task_type caption``,
but get no gradient); the SpecAugment masking is the data loader's (here: random inputs as ours);
BertAdam clips every parameter's gradient on its own after the global clip; DDP (world size 1);
two NaN asserts over the state dict per step.

Runtime patches (none changes the model's math):
  * ``CLIP.get_config`` returns a random ViT-B/32 state dict (the released ``CLIP`` class's own,
    OpenAI key names) instead of loading/downloading ``ViT-B-32.pt``.
  * ``task_config.fp16 = True``: with ``fp16 False`` (the released pre-training command) the model
    calls ``convert_weights`` and keeps its Linear / Conv / attention weights in fp16 (pure-fp16
    training on the GPU); ``fp16 True`` skips that, so the model is fp32. The ``--fp16`` train-loop
    branch (CUDA autocast + GradScaler) is *not* used: the step runs the fp32 branch.
  * A one-process gloo group (world size 1) instead of NCCL, so ``AllGather`` / ``barrier`` run as
    in training; DDP is built with ``device_ids=None`` (CPU) instead of ``[local_rank]``.
  * The forward is given only the keys ``AudioClip.forward`` accepts: ``main_pretrain.train_epoch``
    also passes ``token_type_ids`` / ``pairs_masked_text`` / ... which the released forward
    rejects (``TypeError``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import rss_gib, run_steps, wait_for_idle  # noqa: E402  (also puts the repo root on sys.path)
from step_batch import WORDS, random_pretrain_batch  # noqa: E402


def released_dir(path: str) -> Path:
    """The released code's directory; a bare git directory is extracted (``git archive HEAD``)."""
    p = Path(path).resolve()
    if (p / "modules" / "modeling.py").exists():
        return p
    if (p / "HEAD").exists() and (p / "objects").exists():
        out = Path(tempfile.mkdtemp(prefix="released_clip4vla_"))
        archive = subprocess.run(["git", f"--git-dir={p}", "archive", "HEAD"], stdout=subprocess.PIPE, check=True)
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
        print(f"extracted {p} to {out}", file=sys.stderr)
        return out
    raise SystemExit(f"{p}: neither the released code (modules/modeling.py) nor a bare git directory")


def task_config(args) -> SimpleNamespace:
    """``main_pretrain.get_args()`` for ``scripts/pretrain_howto100m_s1.sh`` (parser defaults otherwise)."""
    return SimpleNamespace(
        do_pretrain=True, do_train=False, do_eval=False, with_self_supervised=True, loss_func="tav_nce",
        with_control_token=2, with_bg_token=False, max_words=WORDS, max_frames=args.frames,
        max_audio_length=args.segments, lr=1e-7, coef_lr=1.0, warmup_proportion=0.1,
        freeze_layer_num=args.freeze_layer_num, freeze=None, pretrained_clip_name="ViT-B/32",
        task_type="caption", retrieval_finetune="feat_avg", stage_two=False, train_sim_after_cross=False,
        no_audio_initialize=False, refine_nce=False, cross_num_hidden_layers=4, n_pair=1, use_mil=True,
        sampled_use_mil=True, gradient_accumulation_steps=1, batch_size=args.batch, datatype="audioset+howto",
        # fp32 weights (see the module docstring: the released command keeps them in fp16)
        fp16=True,
        local_rank=0, rank=0, world_size=1, n_gpu=1,
    )


def random_clip_state_dict(CLIP) -> dict:
    """A ViT-B/32 CLIP state dict with OpenAI's key names, from the released ``CLIP`` class."""
    torch.manual_seed(0)
    clip = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12)
    return {k: v.detach().clone() for k, v in clip.state_dict().items()}


def build(args):
    """The released model, optimiser and one batch in the released layout."""
    code = str(released_dir(args.released_code))
    sys.path.insert(0, code)  # the released code imports itself as ``modules.*`` / ``util``
    if not args.verbose:
        logging.getLogger("modules").setLevel(logging.ERROR)  # its per-parameter freeze log
    from modules.module_clip import CLIP
    from modules.modeling import AudioClip
    import util as released_util

    # no checkpoint download: random ViT-B/32 weights with the checkpoint's keys and shapes
    state = random_clip_state_dict(CLIP)
    CLIP.get_config = staticmethod(lambda pretrained_clip_name="ViT-B/32": {k: v.clone() for k, v in state.items()})

    # one-process gloo group: the released forward all-gathers features and calls barrier()
    if not torch.distributed.is_initialized():
        store = tempfile.NamedTemporaryFile(prefix="released_step_pg_", delete=False).name
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)

    config = task_config(args)
    torch.manual_seed(0)
    model = AudioClip.from_pretrained(state_dict=None, task_config=config)
    model.train()

    real_ddp = torch.nn.parallel.DistributedDataParallel

    def cpu_ddp(module, device_ids=None, output_device=None, **kwargs):
        # CPU modules take device_ids=None (the released code passes [local_rank] for its GPU)
        return real_ddp(module, **kwargs) if args.ddp else module

    torch.nn.parallel.DistributedDataParallel = cpu_ddp
    try:
        optimizer, _, model = released_util.prep_optimizer_clip(config, model, 1000, "cpu", 1, 0, coef_lr=config.coef_lr)
    finally:
        torch.nn.parallel.DistributedDataParallel = real_ddp

    b, f, n = args.batch, args.frames, args.segments
    raw = random_pretrain_batch(b, f, n)
    ones = torch.ones(b, 1, WORDS, dtype=torch.long)
    inputs = {  # dataloader_audioset_howto's shapes, collated
        "input_ids": raw["text"].view(b, 1, WORDS),
        "attention_mask": ones,
        "video": raw["frames"].view(b, 1, f, 1, 3, *raw["frames"].shape[-2:]),
        "video_mask": raw["frame_mask"].long().view(b, 1, f),
        "input_caption_ids": torch.zeros_like(ones),
        "decoder_mask": torch.zeros_like(ones),
        "output_caption_ids": torch.zeros_like(ones),
        "audio": raw["audio"].view(b, 1, n, 3, 224, 224),
        "audio_mask": raw["audio_mask"].long().view(b, 1, n),
        "masked_audio": raw["masked_audio"].view(b, 1, n, 3, 224, 224),
        "bg_token_gt": raw["audio_type"].view(b, 1),
    }
    return model, optimizer, inputs


def nan_check(model) -> None:
    """``main_pretrain.train_epoch``'s assert, run before and after every optimiser step."""
    assert not torch.isnan(sum([a.sum() for a in model.state_dict().values()])), "model's gradients has nan"


def one_step(model, optimizer, inputs) -> dict:
    """The fp32 branch of ``main_pretrain.train_epoch`` for one batch (gradient_accumulation_steps 1)."""
    t0 = time.perf_counter()
    loss, recorder = model(**inputs)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    float(loss.detach())  # main_pretrain: total_loss += float(loss)
    nan_check(model)
    c0 = time.perf_counter() - t2
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    c1 = time.perf_counter()
    nan_check(model)
    check = c0 + time.perf_counter() - c1
    optimizer.zero_grad()
    t3 = time.perf_counter()
    return {"step": t3 - t0, "fwd": t1 - t0, "bwd": t2 - t1, "opt": t3 - t2, "check": check,
            "loss": float(loss.detach()), "parts": recorder.return_str()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released-code", required=True,
                        help="directory of the extracted released code (or its bare git directory)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--freeze-layer-num", type=int, default=-1,
                        help="released --freeze_layer_num: -1 = its pre-training script (all CLIP trains), "
                             "13 = all CLIP frozen (like our step)")
    parser.add_argument("--no-ddp", dest="ddp", action="store_false",
                        help="leave out the DDP wrapper the released code always uses (world size 1 here)")
    parser.add_argument("--wait-idle", type=float, default=0.0,
                        help="shared machine: wait up to this many seconds for >= 90%% idle CPUs first")
    parser.add_argument("--verbose", action="store_true", help="keep the released code's log")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rss_start = rss_gib()
    model, optimizer, inputs = build(args)
    rss_built = rss_gib()
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = "released fp32" + ("" if args.freeze_layer_num == -1 else f" freeze{args.freeze_layer_num}") \
        + ("" if args.ddp else " no-ddp")
    print(f"[{config}] {params / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trainable; batch {args.batch}, "
          f"{args.frames} frames, {args.segments} audio segments (x2: clean + masked), {WORDS} words, "
          f"{args.threads} threads", file=sys.stderr, flush=True)
    if args.wait_idle:
        idle = wait_for_idle(args.wait_idle)
        print(f"  (machine {100 * idle:.0f} % idle)", file=sys.stderr, flush=True)

    steps = run_steps(lambda: one_step(model, optimizer, inputs), args.warmup, args.steps, args.threads, lambda s: (
        f"[{config}] {s['step']:.1f} s (fwd {s['fwd']:.1f}, bwd {s['bwd']:.1f}, opt {s['opt']:.1f} of which checks "
        f"{s['check']:.1f}), cpu share {s['cpu_share']:.2f}, {s['sys_s']:.1f} s system, loss {s['loss']:.3f} "
        f"[{s['parts']}]"))

    timed = [s for s in steps if not s["warmup"]] or steps

    def mean(key):
        return statistics.mean(s[key] for s in timed)

    rss = rss_gib()
    result = {
        "config": config, "batch": args.batch, "frames": args.frames, "segments": args.segments,
        "threads": torch.get_num_threads(), "timed_steps": len(timed) if args.steps else 0,
        "s_per_step": mean("step"), "min_s": min(s["step"] for s in timed),
        "fwd_s": mean("fwd"), "bwd_s": mean("bwd"), "opt_s": mean("opt"), "nan_check_s": mean("check"),
        "user_s_per_step": mean("user_s"), "sys_s_per_step": mean("sys_s"), "cpu_share": mean("cpu_share"),
        "peak_rss_gib": rss["VmHWM"], "rss_after_build_gib": rss_built["VmRSS"], "rss_start_gib": rss_start["VmRSS"],
        "params_m": params / 1e6, "trainable_m": trainable / 1e6, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print(f"{config}: {result['s_per_step']:.1f} s/step (min {result['min_s']:.1f}; fwd {result['fwd_s']:.1f}, "
          f"bwd {result['bwd_s']:.1f}, opt {result['opt_s']:.1f}), {args.batch / result['s_per_step']:.3f} samples/s, "
          f"peak RSS {result['peak_rss_gib']:.2f} GiB, cpu share {result['cpu_share']:.2f}, "
          f"{result['sys_s_per_step']:.1f} s system/step")
    print(json.dumps(result), flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
