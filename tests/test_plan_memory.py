"""scripts/plan_memory.py: the "what fits where" estimate, from the cached activation measurements."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip4vla.models.clip import CLIPConfig
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.train import memory_plan as mp
from script_checks import load_script

REPO = Path(__file__).resolve().parent.parent
MEASUREMENTS = mp.load_measurements(REPO / "benchmarks" / "activation_memory.json")


def _script():
    return load_script("plan_memory")


def test_parameter_count_of_vit_b32_matches_the_built_model():
    counts = mp.count_parameters("ViT-B-32")
    torch.manual_seed(0)
    model = CLIP4VLA.from_config(CLIPConfig.vit_b_32(), audio_init="vision", use_type_token=True)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.audio == sum(p.numel() for p in model.audio.parameters())
    # OpenAI's ViT-B/32 CLIP has 151,277,313 parameters (text + vision + logit_scale)
    assert counts.text + counts.vision == 151_277_313
    assert counts.largest_block == sum(p.numel() for p in model.clip.visual.transformer.resblocks[0].parameters())
    # the shipped measurements were made with these counts
    assert MEASUREMENTS["parameters"]["ViT-B-32"] == mp.parameters_record("ViT-B-32")


def test_measured_composition_matches_a_whole_step():
    """The per-tower, per-item measurements add up to the bytes one whole pre-training step saved."""
    checks = MEASUREMENTS["step_check"]
    assert {(c["precision"], c["batch"], c["checkpointing"]) for c in checks} == {
        (p, b, ck) for p in ("fp32", "bf16") for b in (1, 2) for ck in (False, True)}
    for c in checks:
        assert c["composed_bytes"] == pytest.approx(c["step_bytes"], rel=0.02)


def test_fsdp_states_per_rank_shrink_with_ranks():
    states = [mp.plan("ViT-L-14", "A100-80GB", MEASUREMENTS, strategy="fsdp", ranks=r, batch=1) for r in (2, 4, 8)]
    totals = [p.weights + p.grads + p.optimizer for p in states]
    assert totals[0] > totals[1] > totals[2]
    ddp = mp.plan("ViT-L-14", "A100-80GB", MEASUREMENTS, strategy="ddp", ranks=8, batch=1)
    assert totals[2] < (ddp.weights + ddp.grads + ddp.optimizer) / 4
    # frozen towers are whole on every rank whatever the strategy
    frozen = mp.plan("ViT-L-14", "A100-80GB", MEASUREMENTS, strategy="fsdp", ranks=8, batch=1, train_clip=False)
    assert frozen.weights * mp.GIB > 4 * (frozen.params.text + frozen.params.vision)


def test_checkpointing_and_half_precision_lower_activations():
    for backbone in mp.BACKBONES:
        full = mp.plan(backbone, "H100-80GB", MEASUREMENTS, batch=8, precision="fp32")
        ckpt = mp.plan(backbone, "H100-80GB", MEASUREMENTS, batch=8, precision="fp32", checkpointing=True)
        half = mp.plan(backbone, "H100-80GB", MEASUREMENTS, batch=8, precision="bf16")
        assert ckpt.activations < full.activations / 3
        assert half.activations < 0.75 * full.activations
        assert mp.plan(backbone, "H100-80GB", MEASUREMENTS, batch=8, precision="fp16").activations == half.activations


@pytest.mark.parametrize("options", [
    dict(backbone="ViT-L-14-336", gpu="V100-16GB", strategy="fsdp", precision="fp16", checkpointing=True),
    dict(backbone="ViT-B-32", gpu="A100-40GB", strategy="ddp", precision="bf16"),
    dict(backbone="ViT-L-14", gpu="H100-80GB", strategy="ddp", precision="bf16", train_clip=False),
])
def test_largest_batch_fits_and_one_more_does_not(options):
    best = mp.largest_batch(measurements=MEASUREMENTS, **options)
    assert best >= 1
    assert mp.plan(measurements=MEASUREMENTS, batch=best, **options).fits
    assert not mp.plan(measurements=MEASUREMENTS, batch=best + 1, **options).fits


def test_a_model_too_big_for_the_card_reports_zero():
    assert mp.largest_batch("ViT-L-14-336", "V100-16GB", MEASUREMENTS, strategy="ddp", precision="fp16") == 0


def test_unknown_names_are_clear_errors(capsys):
    with pytest.raises(ValueError, match="unknown backbone 'ViT-H-14'; known: ViT-B-32"):
        mp.plan("ViT-H-14", "A100-80GB", MEASUREMENTS)
    with pytest.raises(ValueError, match="unknown GPU 'A10'; known: V100-16GB"):
        mp.plan("ViT-B-32", "A10", MEASUREMENTS)
    script = _script()
    for argv, said in ((["--backbone", "RN50"], "unknown backbone 'RN50'"), (["--gpu", "T4"], "unknown GPU 'T4'")):
        with pytest.raises(SystemExit) as exit_info:
            script.main(argv)
        assert exit_info.value.code == 2
        assert said in capsys.readouterr().err


def test_script_breakdown_and_table(tmp_path, capsys):
    script = _script()
    assert script.main(["--backbone", "ViT-L-14-336", "--gpu", "V100-16GB", "--strategy", "fsdp",
                        "--checkpointing"]) == 0
    out = capsys.readouterr().out
    for label in ("weights (fp32)", "AdamW moments", "activations + inputs (fp16, batch 16)", "CUDA context",
                  "largest per-rank batch that fits", "estimate (not yet confirmed on a GPU)"):
        assert label in out
    table = tmp_path / "table.md"
    assert script.main(["--table", "--table-out", str(table)]) == 0
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "/" in line[2:12]]
    assert len(rows) == 2 * len(script.TABLE_BACKBONES)
    assert "estimate (not yet confirmed on a GPU)" in table.read_text()
