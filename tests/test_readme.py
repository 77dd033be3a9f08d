"""The README's synthetic chain, run as written, in README order (micro settings where it trains).

A newcomer runs the README's commands one after the other; one of them (the JSON snippet right
after the quick start) once could not run there at all. This test reads the commands out of
README.md's code blocks, so it fails when the text drifts from what runs: every command of the
synthetic chain is either run here — in a scratch folder laid out like the repository, with the
micro model and 24 clips injected as ``--set`` overrides — or named below with the reason it is
not (too slow for CI, or covered by another test). A command the README gains or changes that is
in neither list fails the test until it is classified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PRETRAIN_CLIPS
from hub_cache import hub_cache

REPO = Path(__file__).resolve().parents[1]

# Where the training commands are too slow for CI: what they would run, and which test runs it.
NOT_RUN = {
    "python scripts/finetune_retrieval.py": "trains minutes on CPU; tests/test_retrieval_learns.py runs it",
    "python scripts/evaluate_retrieval.py --model runs/finetune_synthetic/model":
        "needs the fine-tune above; tests/test_evaluate_scripts.py runs the script",
    "python scripts/finetune_caption.py": "trains minutes on CPU; tests/test_caption_learns.py runs it",
    "python scripts/evaluate_caption.py --model runs/caption_synthetic/model --beam 5":
        "needs the caption fine-tune; tests/test_evaluate_scripts.py runs the script",
    "python scripts/linear_probe.py": "lays out two format twins and extracts features of each; "
                                      "tests/test_configs_run.py runs the probe configs",
    "clip4vla-search serve --dir data/synthetic/videos": "a server that runs until Ctrl-C; tests/test_serve_api.py "
                                                         "starts it on a free port, tests/test_serve_browser.py drives the page",
    "python scripts/ablate.py --table 5": "16 training runs (minutes on CPU); tests/test_ablation.py runs "
                                          "configs/ablations/table5.yaml through it with micro settings",
    "python scripts/plot_runs.py runs/ablation_table5/seed0 --metric ta":
        "needs the ablation's runs; tests/test_tensorboard.py runs the script",
    "hf upload your-name/clip4vla-synthetic exports/clip4vla-synthetic":
        "needs a Hub account and the network; the <python: hub> block reads the uploaded folder back from a "
        "Hub cache laid out on disk (tests/test_model_folder.py checks that layout and its errors)",
    "tensorboard --logdir runs/ablation_table5/tensorboard/rows":
        "a server that runs until Ctrl-C; tests/test_ablation.py reads the dashboard's event files with "
        "TensorBoard's own reader",
}
# "Train on your own videos": the synthetic clips as a manifest (the fine-tunes micro-sized below)
MANIFEST_CHAIN = [
    "python scripts/make_synthetic.py --format manifest --out data/manifest --source data/synthetic",
    "python scripts/finetune_retrieval.py --config configs/finetune_manifest.yaml",
    "python scripts/evaluate_retrieval.py --model runs/finetune_manifest/model --config configs/finetune_manifest.yaml",
    "python scripts/finetune_caption.py --config configs/finetune_caption_manifest.yaml",
    "python scripts/evaluate_caption.py --model runs/caption_manifest/model --config "
    "configs/finetune_caption_manifest.yaml",
    "clip4vla-search index data/manifest/media --model runs/finetune_manifest/model",
]
EXPORT = "python scripts/export_model.py runs/pretrain_synthetic/model exports/clip4vla-synthetic --license mit --onnx"
HUB_ID = "your-name/clip4vla-synthetic"  # the README's example id, served here from an on-disk Hub cache
# The training-free commands after the quick start that this test runs, in README order.
RUN = [
    "python scripts/pretrain.py",
    "python scripts/pretrain.py --resume | tail -n 1 | python -c \"import json,sys; print(json.load(sys.stdin)['t2a'])\"",
    "python scripts/evaluate_retrieval.py --model runs/pretrain_synthetic/model --fusion g2g",
    "python scripts/sweep_audio_type.py --model runs/pretrain_synthetic/model",
    *MANIFEST_CHAIN,
    "<python: load_model>",
    "<python: hub>",
    EXPORT,
    "clip4vla-search index data/synthetic/videos --model runs/pretrain_synthetic/model",
    "clip4vla-search query \"a small red shape with a high siren\" --dir data/synthetic/videos --top-k 3",
    "<python: embed>",
    "python scripts/make_synthetic.py --format vatex --out twins/vatex --num-clips 40",
]
MICRO = {  # the quick start's geometry (2 frames, 2 segments), the micro model, 24 clips, 1 epoch
    "model.arch": "micro", "data.synthetic.clips": PRETRAIN_CLIPS, "train.batch_size": 8, "train.epochs": 1,
    "train.eval_every_epochs": 1, "data.num_workers": 0,
}
EVAL_MICRO = {"data.synthetic.clips": PRETRAIN_CLIPS}  # the evaluation configs' data: the same 24 clips
# the manifest fine-tunes: two steps of 4 clips on the quick start's micro model
MANIFEST_MICRO = {"train.max_steps": 2, "train.batch_size": 4, "train.eval_every_steps": 2, "data.num_workers": 0}
# Blocks about the real corpora and clusters, and the installation / test steps of a command line:
# not part of the synthetic chain.
FOREIGN_BLOCK = ("torchrun", " /data/", "#SBATCH", "howto100m", "howto_audioset", "msrvtt")
INSTALL_STEP = ("pip install", "apt-get", "command -v java", "pytest")


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced code block of README.md, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block as bash would run them: continuation lines joined, comment
    lines and trailing comments (after two spaces, the README's style) dropped, ``&&`` chains split."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands += [" ".join(part.split()) for part in line.split(" && ")]
    return commands


def synthetic_chain() -> list[tuple[str, str]]:
    """``(key, what to run)`` for each README command of the synthetic chain: a shell command (key and
    command alike), or a Python block (key ``<python: load_model>`` / ``<python: embed>``)."""
    chain = []
    for language, block in readme_blocks():
        if language == "python" and "data/howto100m/" in block:  # reading real shards: tests/test_shards.py runs it
            continue
        if language == "python":
            key = "<python: embed>" if "embed_text" in block else "<python: hub>" if HUB_ID in block else \
                "<python: load_model>"
            chain.append((key, block))
        elif language == "bash" and not any(marker in block for marker in FOREIGN_BLOCK):
            chain += [(c, c) for c in shell_commands(block) if not any(step in c for step in INSTALL_STEP)]
    return chain


def test_every_readme_command_of_the_synthetic_chain_is_classified():
    keys = [key for key, _ in synthetic_chain()]
    unknown = [k for k in keys if k not in RUN and k not in NOT_RUN]
    assert not unknown, f"README commands neither run by this test nor listed in NOT_RUN: {unknown}"
    assert [k for k in keys if k in RUN] == RUN, "the README's order changed; update RUN"
    assert set(NOT_RUN) <= set(keys), f"NOT_RUN lists commands the README no longer has: {set(NOT_RUN) - set(keys)}"


def _with_overrides(command: str, script: str, overrides: dict[str, object]) -> str:
    """Insert ``--set k=v`` right after ``script`` in ``command`` (first occurrence)."""
    sets = " ".join(f"--set {k}={v}" for k, v in overrides.items())
    return command.replace(script, f"{script} {sets}", 1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory, synthetic_root) -> Path:
    """A scratch folder laid out like the repository: scripts/ and configs/ linked, data/synthetic a
    copy of the 24-clip set (the search index writes into it)."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("scripts", "configs"):
        (root / name).symlink_to(REPO / name)
    shutil.copytree(synthetic_root, root / "data" / "synthetic")
    return root


def _run(command: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    search = shutil.which("clip4vla-search")
    command = re.sub(r"(^|\| )python ", rf"\1{shlex.quote(sys.executable)} ", command)
    if command.startswith("clip4vla-search") and search is None:  # not installed: the same program
        command = command.replace("clip4vla-search", f"{shlex.quote(sys.executable)} scripts/search.py", 1)
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_readme_synthetic_chain_runs_in_order(readme_folder):
    chain = [(key, what) for key, what in synthetic_chain() if key in RUN]
    run_dir = readme_folder / "runs" / "pretrain_synthetic"
    seen = {}
    for key, what in chain:
        if "make_synthetic.py" in key:  # a format twin: the quick start's data stays as it was
            data_before = _fingerprint(readme_folder / "data" / "synthetic")
        if key == "<python: hub>":  # the quick start's folder as if uploaded, and OpenAI's file brought along
            cache = readme_folder / "hf-cache"
            hub_cache(cache, HUB_ID, {f.name: f.read_bytes() for f in (run_dir / "model").iterdir()})
            (readme_folder / "ViT-B-32.pt").symlink_to(REPO / "tests" / "fixtures" / "clip_tiny_vit_jit.pt")
            done = _run(f"python - <<'EOF'\n{what}\nEOF", readme_folder,
                        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
        elif key.startswith("<python"):
            done = _run(f"python - <<'EOF'\n{what}\nEOF", readme_folder)
        elif "scripts/pretrain.py" in key:
            done = _run(_with_overrides(what, "scripts/pretrain.py", MICRO), readme_folder)
        elif key in MANIFEST_CHAIN[1:5:2]:  # the two fine-tunes
            script = re.search(r"scripts/\w+\.py", key).group(0)
            done = _run(_with_overrides(what, script, MANIFEST_MICRO), readme_folder)
        elif "scripts/evaluate_retrieval.py" in key or "scripts/sweep_audio_type.py" in key:
            script = re.search(r"scripts/\w+\.py", key).group(0)
            done = _run(_with_overrides(what, script, EVAL_MICRO), readme_folder)
        else:
            done = _run(what, readme_folder)
        seen[key] = done
        if key == "python scripts/pretrain.py":
            model_hash, log_hash = _fingerprint(run_dir / "model"), _sha256(run_dir / "metrics.jsonl")

    # the quick start ends with one JSON object; the snippet after it reads that object again
    # from --resume, which on the finished run trains nothing and writes nothing
    assert "t2a" in json.loads(seen[RUN[0]].stdout.strip().splitlines()[-1])
    assert re.fullmatch(r"\{'R1': [\d.]+, 'R5': .*\}\n", seen[RUN[1]].stdout)
    assert (_fingerprint(run_dir / "model"), _sha256(run_dir / "metrics.jsonl")) == (model_hash, log_hash)
    assert "[val]" not in seen[RUN[1]].stderr and "resumed from" in seen[RUN[1]].stderr

    # what the README says these print
    text = (REPO / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"print\(model\.preprocessing\)\s+# (Preprocessing\(.*?), \.\.\.\)", text).group(1)
    assert seen["<python: load_model>"].stdout.startswith(shown)
    assert seen["<python: hub>"].stdout == "CLIP4VLA CLIP4VLA\n"
    export_block = next(b for lang, b in readme_blocks() if lang == "bash" and "scripts/export_model.py" in b)
    said = next(line[2:] for line in export_block.splitlines() if line.startswith("# "))
    assert seen[EXPORT].stdout.splitlines()[0] == said  # what the README says it prints
    index_line = re.compile(r"\d+ files: \d+ embedded, \d+ unchanged, \d+ dropped \(deleted\), \d+ unreadable "
                            r"\([\d.]+ s\) -> data/synthetic/videos/\.clip4vla-index\.pt")
    index, query = (next(k for k in RUN if k.startswith(f"clip4vla-search {verb} ") and "data/synthetic/" in k)
                    for verb in ("index", "query"))
    assert index_line.fullmatch(seen[index].stdout.strip())
    result_line = re.compile(r"\s*\d\. -?[01]\.\d{3}  \S*data/synthetic/videos/video\d+\.mp4")
    printed = seen[query].stdout.strip().splitlines()
    assert len(printed) == 3 and all(result_line.fullmatch(line) for line in printed), printed
    block = next(b for lang, b in readme_blocks() if lang == "bash" and "clip4vla-search query" in b)
    sample = [line.lstrip("#") for line in block.splitlines() if re.match(r"#\s+\d\. ", line)]
    assert sample and all(result_line.fullmatch(line.replace("/.../", "/x/")) for line in sample), \
        f"the README's sample query output is not what the command prints: {sample}"
    assert re.search(r"tensor\(\[\[", seen["<python: embed>"].stdout)
    # your own videos: the manifest chain scores the same clips from the file as at the end of training
    _, finetune, evaluate, caption, evaluate_caption, manifest_index = (seen[k] for k in MANIFEST_CHAIN)
    trained = json.loads(finetune.stdout.strip().splitlines()[-1])
    assert trained["av"]["n_texts"] > trained["av"]["n_videos"] > 0  # every caption a query
    assert json.loads(evaluate.stdout.strip().splitlines()[-1])["av"] == trained["av"]
    captioned = json.loads(caption.stdout.strip().splitlines()[-1])
    assert json.loads(evaluate_caption.stdout.strip().splitlines()[-1])["n_videos"] == captioned["n_videos"] > 0
    assert re.match(r"\d+ files: \d+ embedded, .* -> data/manifest/media/\.clip4vla-index\.pt",
                    manifest_index.stdout.strip())
    assert _fingerprint(readme_folder / "data" / "synthetic") == data_before
    assert len(list((readme_folder / "twins" / "vatex" / "videos").glob("*.mp4"))) == 40
