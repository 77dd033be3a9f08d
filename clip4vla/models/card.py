"""The model card: the ``README.md`` of a model folder, written by the run (or the converter) itself.

A card is only as good as its facts, so every line here comes from the run: the architecture and
preprocessing records, the corpus and clip counts, the schedule, the resolved config and the test
table the run printed. What a run cannot know (the licence, a description, the Hub ids of the
datasets) comes from ``train.card`` or ``scripts/export_model.py`` flags; when nobody said, the
card says it was not stated instead of inventing a value.

The YAML front matter is what the Hub reads: ``library_name``, ``license``, ``tags``, ``datasets``,
``pipeline_tag`` and a ``model-index`` with the test metrics, so the numbers show on the model's page.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["CITATION", "CardFacts", "card_metrics", "model_card"]

CITATION = """@inproceedings{ruan2023clip4vla,
  title     = {Accommodating Audio Modality in CLIP for Multimodal Processing},
  author    = {Ruan, Ludan and Hu, Anwen and Song, Yuqing and Zhang, Liang and Zheng, Sipeng and Jin, Qin},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2023}
}"""

# What each task's test measures, in the Hub's words (its task types) and ours.
_TASKS = {
    "pretrain": ("feature-extraction", "zero-shot text/video-to-audio retrieval"),
    "retrieval": ("feature-extraction", "text-to-video retrieval"),
    "caption": ("video-text-to-text", "video captioning"),
}
# summary keys that describe the test rather than score it
_NOT_METRICS = {"split", "fusion", "skipped", "chance", "baselines", "tokenizer", "n_unreadable", "n_silent", "n_clips",
                "n_videos", "model"}
_VIT_SIZES = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H"}


@dataclasses.dataclass
class CardFacts:
    """Everything a card says; ``None`` means unknown (the card says so, nothing is made up)."""

    name: str
    architecture: Mapping[str, Any]
    preprocessing: Mapping[str, Any]
    license: str | None = None
    description: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    datasets: list[str] = dataclasses.field(default_factory=list)  # Hub dataset ids, from the user
    task: str | None = None  # pretrain / retrieval / caption; None: converted, not trained here
    step: int | None = None
    weights: str | None = None  # "last" / "best"
    started_from: str | None = None  # in words: "`runs/pretrain/model`", "random weights"
    converted_from: str | None = None  # the source file of scripts/export_model.py, with its kind
    corpora: Mapping[str, str] = dataclasses.field(default_factory=dict)  # role -> corpus
    clips: Mapping[str, int] = dataclasses.field(default_factory=dict)  # split -> clips read
    schedule: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # epochs, batch, precision...
    config_yaml: str | None = None
    test_table: str | None = None
    test_summary: Mapping[str, Any] | None = None
    usage_extra: str | None = None  # e.g. how to feed the ONNX encoders


def backbone_name(clip: Mapping[str, Any]) -> str:
    """``ViT-B/32`` (+ ``@336px``) for a known size, else the shape in words."""
    size = _VIT_SIZES.get((clip.get("vision_width"), clip.get("vision_layers")))
    resolution = clip.get("image_resolution")
    if size is None:
        return (f"a ViT of width {clip.get('vision_width')}, {clip.get('vision_layers')} layers, "
                f"{clip.get('vision_patch_size')}-px patches at {resolution} px (text width "
                f"{clip.get('transformer_width')}, {clip.get('transformer_layers')} layers)")
    return f"ViT-{size}/{clip.get('vision_patch_size')}{f'@{resolution}px' if resolution != 224 else ''}"


def card_metrics(summary: Mapping[str, Any] | None) -> list[tuple[str, float]]:
    """``[(name, value)]`` of a test summary's scores: nested keys joined with ``/`` (``av/t2v/R1``)."""
    found: list[tuple[str, float]] = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if key in _NOT_METRICS:
                continue
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(value, f"{name}/")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                found.append((name, float(value)))

    walk(summary or {}, "")
    return found


def _yaml_text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _front_matter(facts: CardFacts) -> str:
    lines = ["---", "library_name: clip4vla"]
    if facts.license:
        lines.append(f"license: {_yaml_text(facts.license)}")
    tags = list(dict.fromkeys(["clip4vla", "clip", "audio", "video", "text-video-audio-retrieval", *facts.tags]))
    lines.append("tags:")
    lines += [f"- {_yaml_text(tag)}" for tag in tags]
    if facts.datasets:
        lines.append("datasets:")
        lines += [f"- {_yaml_text(d)}" for d in facts.datasets]
    hub_task, task_name = _TASKS.get(facts.task or "", ("feature-extraction", None))
    lines.append(f"pipeline_tag: {hub_task}")
    metrics = card_metrics(facts.test_summary)
    if metrics and task_name:
        split = (facts.test_summary or {}).get("split", "test")
        corpus = facts.corpora.get("evaluation") or facts.corpora.get("training") or "unknown"
        lines += ["model-index:", f"- name: {_yaml_text(facts.name)}", "  results:", "  - task:",
                  f"      type: {hub_task}", f"      name: {_yaml_text(task_name)}", "    dataset:",
                  f"      name: {_yaml_text(f'{corpus} ({split} split)')}", f"      type: {_yaml_text(corpus)}",
                  f"      split: {_yaml_text(str(split))}", "    metrics:"]
        for name, value in metrics:
            lines += [f"    - type: {_yaml_text(name)}", f"      value: {round(value, 4)}",
                      f"      name: {_yaml_text(name)}"]
    lines.append("---")
    return "\n".join(lines)


def _what_it_is(facts: CardFacts) -> list[str]:
    architecture = facts.architecture
    clip = architecture.get("clip", {})
    heads = sorted(architecture.get("heads", {}) or {})
    token = architecture.get("audio_type_token")
    lines = [
        f"A CLIP4VLA model (Ruan et al., *Accommodating Audio Modality in CLIP for Multimodal Processing*, AAAI "
        f"2023; released code: https://github.com/ludanruan/CLIP4VLA): CLIP's text and vision "
        f"towers with an audio tower of the vision tower's architecture, so text, video frames and sound map into "
        f"one {clip.get('embed_dim')}-dimensional space where the dot product of unit vectors is the match score.",
        "",
        f"- Backbone: {backbone_name(clip)}, {clip.get('activation', 'quick_gelu')} activation; "
        f"audio tower on {architecture.get('audio_resolution', clip.get('image_resolution'))}x"
        f"{architecture.get('audio_resolution', clip.get('image_resolution'))} spectrogram segments"
        + ("" if token is None else f", {'with' if token else 'without'} the [VB]/[NB] audio type token") + ".",
        f"- Task heads: {', '.join(heads) if heads else 'none (the three encoders only)'}.",
    ]
    if facts.description:
        lines += ["", facts.description.strip()]
    return lines


def _provenance(facts: CardFacts) -> list[str]:
    if facts.task is None:
        lines = [f"Converted with `scripts/export_model.py` from {facts.converted_from or 'a model file'}; "
                 "no training or test happened in the conversion, so this card has no test results."]
        return lines
    lines = [f"Trained by clip4vla's `{facts.task}` run"
             + (f", starting from {facts.started_from}" if facts.started_from else "")
             + (f"; these are the weights of step {facts.step}" if facts.step is not None else "")
             + (f" ({'the best validation' if facts.weights == 'best' else 'the last step'})" if facts.weights else "")
             + "."]
    if facts.corpora:
        lines.append("")
        lines += [f"- {role.capitalize()} corpus: `{corpus}`" for role, corpus in facts.corpora.items()]
    if facts.clips:
        counts = ", ".join(f"{split} {n:,}" for split, n in facts.clips.items())
        lines.append(f"- Clips read: {counts}")
    if facts.schedule:
        lines.append("- Schedule: " + ", ".join(f"{k} {v}" for k, v in facts.schedule.items()))
    return lines


def _preprocessing(facts: CardFacts) -> list[str]:
    p = facts.preprocessing
    audio_type = p.get("audio_type")
    kind = ("each clip's own ([VB] speech, [NB] other sounds)" if audio_type is None else repr(audio_type))
    return [
        f"- Frames: {p.get('max_frames')} per clip ({p.get('frame_sampling')} sampling), {p.get('image_size')} px, "
        "CLIP's normalisation.",
        f"- Sound: the `{p.get('frontend')}` log-mel front-end, up to {p.get('max_segments')} segments of "
        f"224x224 ({p.get('selection')} selection) from at most {p.get('max_seconds')} s; audio type token {kind}.",
        f"- Text: CLIP's BPE tokenizer, {p.get('max_words')} tokens per caption.",
        "",
        "`clip4vla.embed_text`, `embed_video` and `embed_audio` apply all of this from `config.json`; nothing "
        "needs to be set by hand.",
    ]


def model_card(facts: CardFacts) -> str:
    """The whole ``README.md``: front matter, then what the model is, how it was made, how it scores,
    how to load it, what it is for, and the paper to cite."""
    parts = [_front_matter(facts), "", f"# {facts.name}", ""]
    parts += _what_it_is(facts)
    parts += ["", "## Training", ""] + _provenance(facts)
    if facts.config_yaml:
        parts += ["", "<details><summary>The resolved config (<code>config.yaml</code>)</summary>", "", "```yaml",
                  facts.config_yaml.rstrip(), "```", "", "</details>"]
    parts += ["", "## Results", ""]
    if facts.test_table:
        parts += ["What the run printed at its end (the test split; every number also in the front matter):", "",
                  "```", facts.test_table.rstrip(), "```"]
    else:
        parts += ["Not measured for this export. Score it with `python scripts/evaluate_retrieval.py --model "
                  "<this folder> ...` or `python scripts/evaluate_caption.py --model <this folder> ...`."]
    parts += ["", "## How to use", "", "```python", "import clip4vla",
              "model = clip4vla.from_pretrained(\"<this folder or org/name on the Hub>\")",
              "scores = clip4vla.embed_text(model, [\"a dog barks\"]) @ clip4vla.embed_audio(model, [\"clip.mp4\"]).T",
              "```", "", "Inputs are made as in training:", ""] + _preprocessing(facts)
    if facts.usage_extra:
        parts += ["", facts.usage_extra.rstrip()]
    parts += ["", "## Intended use and limitations", "",
              "For research on text, video and audio retrieval and captioning, and for searching one's own media "
              "by text, sound or picture. The model knows only what its training data showed: its scores on other "
              "kinds of media, other languages (the tokenizer and CLIP are English) or sounds unlike its training "
              "clips are not measured here. Retrieval scores rank candidates; they are not calibrated probabilities. "
              "Captions can be wrong or reproduce biases of the training captions.",
              "", "## License", "",
              (f"`{facts.license}`." if facts.license else
               "Not stated by whoever trained it (`train.card.license`, or `--license` of `scripts/export_model.py`)."),
              "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(parts)
