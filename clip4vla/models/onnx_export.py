"""ONNX export of the three encoders: one file per tower, dynamic batch, fp32 unit embeddings.

    from clip4vla.models.onnx_export import export_onnx, onnx_usage
    paths = export_onnx(model, Path("onnx"))        # {"text": .../text.onnx, "video": ..., "audio": ...}
    card = onnx_usage(model)                        # markdown: how to feed them

Each file returns what the torch API returns for the same inputs: ``text.onnx`` the unit rows of
:func:`clip4vla.embed.embed_text` (for the same token ids), ``video.onnx`` and ``audio.onnx`` the
global ``[B, D]`` of :meth:`CLIP4VLA.encode_video` / :meth:`CLIP4VLA.encode_audio`.

Why wrappers: the models encode only the valid frames / segments of a padded batch
(:func:`clip4vla.models.pooling.encode_valid`, boolean indexing), whose shapes depend on the mask's
values; an exported graph must have shapes that follow from the input shapes alone. The wrappers
encode every item and zero the padded ones before the one pooling function
(:func:`masked_mean_normalised`), which gives the same value: padded items weigh 0 there either
way. The cost is compute on padding, which the torch path does not spend.

Frame and segment counts are fixed in the graph (the model's ``max_frames`` / ``max_segments``,
what its data pipeline pads to); only the batch is dynamic.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip4vla.models.audio import AUDIO_RESOLUTION, AUDIO_TYPE_IDS, AudioEncoder
from clip4vla.models.clip import CLIP
from clip4vla.models.clip4vla import CLIP4VLA
from clip4vla.models.pooling import masked_mean_normalised
from clip4vla.models.preprocessing import Preprocessing

__all__ = ["ONNX_FILES", "export_onnx", "onnx_usage"]

ONNX_FILES = {"text": "text.onnx", "video": "video.onnx", "audio": "audio.onnx"}
# Example batch for tracing: not 1, which torch.export would specialise the batch dimension to.
_TRACE_BATCH = 2


class _TextEmbedding(nn.Module):
    """``tokens [B, S]`` int64 -> unit ``[B, D]`` (``embed_text``'s rows)."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)


def _pool_all_items(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, L, D]`` features of every item -> unit ``[B, D]``, as if padded items were never encoded.

    Zeroing (not multiplying) the padded rows first makes them exactly what ``encode_valid`` leaves
    there, so even NaN from garbage in padded pixels cannot reach the mean.
    """
    features = features.masked_fill(~mask.unsqueeze(-1), 0.0)
    return masked_mean_normalised(features, mask)


class _VideoEmbedding(nn.Module):
    """``frames [B, F, 3, H, W]`` + bool ``frame_mask [B, F]`` -> unit ``[B, D]``."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        batch, length = frame_mask.shape
        features = self.clip.encode_image(frames.flatten(0, 1)).view(batch, length, -1)  # [B, F, D]
        return _pool_all_items(features, frame_mask)


class _AudioEmbedding(nn.Module):
    """``segments [B, L, 3, 224, 224]`` + bool ``segment_mask [B, L]`` + int64 ``audio_type [B]`` -> unit ``[B, D]``."""

    def __init__(self, audio: AudioEncoder) -> None:
        super().__init__()
        self.audio = audio

    def forward(self, segments: torch.Tensor, segment_mask: torch.Tensor, audio_type: torch.Tensor) -> torch.Tensor:
        batch, length = segment_mask.shape
        x = self.audio.visual.embed_patches(segments.flatten(0, 1))  # [B*L, 1 + P, W]
        types = None
        if self.audio.use_type_token:
            ids = audio_type.unsqueeze(1).expand(batch, length).reshape(-1)  # [B*L]
            types = self.audio.type_embedding[ids].unsqueeze(1)  # [B*L, 1, W]
        features = self.audio.encode_embedded(x, types).view(batch, length, -1)  # [B, L, D]
        return _pool_all_items(features, segment_mask)


def _name_output(graph: Any, name: str) -> None:
    """Call the graph's one output ``name``, renaming an inner value that already has that name.

    Not ``torch.onnx.export(output_names=...)``: with ``dynamo=True`` it names the output without
    looking, so an op's value with that name (``aten.embedding`` gives ``embedding``) is defined
    twice and onnxruntime refuses the file (pytorch/pytorch#158094, still so in torch 2.11).
    """
    (output,) = graph.outputs
    taken = {value.name for node in graph for value in node.outputs} | {value.name for value in graph.inputs}
    for node in graph:
        for value in node.outputs:
            if value.name == name and value is not output:
                suffix = 1
                while f"{name}_{suffix}" in taken:
                    suffix += 1
                value.name = f"{name}_{suffix}"
                taken.add(value.name)
    output.name = name


def _save_onnx(wrapper: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], path: Path) -> None:
    """Export ``wrapper`` with the batch (dim 0 of every input) dynamic; written next to ``path``
    under a temporary name and moved into place, so a failed export leaves no partial file."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        wrapper,
        inputs,
        dynamo=True,
        input_names=names,
        dynamic_shapes={name: {0: batch} for name in names},
        verbose=False,
    )
    _name_output(program.model.graph, "embedding")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # one self-contained file per encoder (the weights inside, not beside it)
        program.save(temporary, external_data=False)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _item_counts(model: CLIP4VLA, max_frames: int | None, max_segments: int | None) -> tuple[int, int]:
    """Frames and segments per clip: the given counts, else the model's preprocessing record."""
    pre = model.preprocessing or Preprocessing()
    frames = max_frames if max_frames is not None else pre.max_frames
    segments = max_segments if max_segments is not None else pre.max_segments
    for name, value in (("max_frames", frames), ("max_segments", segments)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return frames, segments


def export_onnx(
    model: CLIP4VLA, folder: Path, *, max_frames: int | None = None, max_segments: int | None = None
) -> dict[str, Path]:
    """Write ``text.onnx``, ``video.onnx`` and ``audio.onnx`` into ``folder`` (created if missing).

    Inputs (dim 0, the batch ``B``, is dynamic; the rest are fixed at export):

    * ``text.onnx``: ``tokens`` int64 ``[B, S]``, S = the model's ``max_words`` (the tokenizer's
      ``context_length`` in :func:`clip4vla.embed.embed_text`);
    * ``video.onnx``: ``frames`` float32 ``[B, F, 3, R, R]`` (R = the image tower's resolution) and
      ``frame_mask`` **bool** ``[B, F]``, True on real frames: the data pipeline's own masks, so
      they pass through unconverted;
    * ``audio.onnx``: ``segments`` float32 ``[B, L, 3, 224, 224]``, ``segment_mask`` bool ``[B, L]``
      and ``audio_type`` int64 ``[B]`` (0 = [VB] speech, 1 = [NB] other sounds; ids outside {0, 1}
      are not checked in the graph). A model without type tokens (``model.audio.use_type_token``
      False) takes ``audio_type`` too and ignores it, so every export has one signature. Only
      integer ids are exported, not the "both" or mixing-ratio modes of ``AudioEncoder.type_tokens``.

    ``F`` / ``L`` default to the model's ``preprocessing`` (``max_frames`` / ``max_segments``;
    :class:`Preprocessing`'s defaults when it has none). Every file outputs ``embedding`` float32
    ``[B, D]``, unit rows (zero for a clip whose mask is all False). Task heads are not exported.
    Each file is written under a temporary name in ``folder`` and moved into place. Returns the
    three paths by encoder name.
    """
    frames, segments = _item_counts(model, max_frames, max_segments)
    other = sorted({str(t.dtype) for t in model.state_dict().values() if t.is_floating_point()} - {"torch.float32"})
    if other:  # the files promise fp32 weights and outputs; converting the caller's model is theirs to do
        raise ValueError(f"export_onnx exports float32 models; this one holds {other} tensors (call model.float())")
    words = (model.preprocessing or Preprocessing()).max_words
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    side = model.clip.config.image_resolution
    b = _TRACE_BATCH
    # Export traces in eval mode; every module is put back as it was afterwards (a frozen tower
    # may be in eval while the rest trains).
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        jobs = {
            "text": (_TextEmbedding(model.clip), {
                "tokens": torch.zeros(b, words, dtype=torch.long, device=device)}),  # values do not shape the graph
            "video": (_VideoEmbedding(model.clip), {
                "frames": torch.zeros(b, frames, 3, side, side, device=device),
                "frame_mask": torch.ones(b, frames, dtype=torch.bool, device=device)}),
            "audio": (_AudioEmbedding(model.audio), {
                "segments": torch.zeros(b, segments, 3, AUDIO_RESOLUTION, AUDIO_RESOLUTION, device=device),
                "segment_mask": torch.ones(b, segments, dtype=torch.bool, device=device),
                "audio_type": torch.arange(b, device=device) % len(AUDIO_TYPE_IDS)}),
        }
        paths = {}
        with torch.no_grad():
            for name, (wrapper, inputs) in jobs.items():
                paths[name] = folder / ONNX_FILES[name]
                _save_onnx(wrapper.eval(), tuple(inputs.values()), list(inputs), paths[name])
    finally:
        for module, training in modes.items():
            module.training = training
    return paths


def onnx_usage(model: CLIP4VLA, *, max_frames: int | None = None, max_segments: int | None = None) -> str:
    """A markdown section for a model card: how to feed the three files of :func:`export_onnx`.

    Pass the same ``max_frames`` / ``max_segments`` as to :func:`export_onnx` if you overrode them.
    Every value comes from the model (its config and ``preprocessing`` record) or from the library
    code that made its training inputs, so the card cannot drift from what was exported.
    """
    # Imported here: the data-side packages (torchvision, torchaudio, PyAV) are only needed for the text.
    from clip4vla.audio import load_audio
    from clip4vla.audio.segments import _STD_EPS, SEGMENT_LENGTH
    from clip4vla.video.transform import CLIP_MEAN, CLIP_STD

    pre = model.preprocessing or Preprocessing()
    recorded = ("the model file's preprocessing record" if model.preprocessing is not None
                else "clip4vla's defaults (this model carries no preprocessing record)")
    f, l = _item_counts(model, max_frames, max_segments)
    s, dim, side = pre.max_words, model.clip.config.embed_dim, model.clip.config.image_resolution
    mean = ", ".join(repr(v) for v in CLIP_MEAN)
    std = ", ".join(repr(v) for v in CLIP_STD)
    rate = inspect.signature(load_audio).parameters["sample_rate"].default  # what training and embed decode at
    seconds = f"{pre.max_seconds:g}"
    return f"""## ONNX encoders

Three fp32 ONNX files, one per encoder (`{ONNX_FILES['text']}`, `{ONNX_FILES['video']}`, `{ONNX_FILES['audio']}`,
written by `clip4vla.models.onnx_export.export_onnx`). The first dimension `B` of every input is the batch
and may be any size; the other dimensions are fixed. Each file outputs `embedding`, float32 `[B, {dim}]`: unit
vectors, so the dot product of a text row and a video or audio row is their cosine score (a clip whose mask is
all false gives a zero row). The preprocessing below is {recorded}.

| file | input | dtype | shape | holds |
| --- | --- | --- | --- | --- |
| `{ONNX_FILES['text']}` | `tokens` | int64 | `[B, {s}]` | CLIP BPE ids `[SOT] + text + [EOT]`, right-padded with 0 |
| `{ONNX_FILES['video']}` | `frames` | float32 | `[B, {f}, 3, {side}, {side}]` | CLIP-normalised RGB frames; padding rows 0 |
| `{ONNX_FILES['video']}` | `frame_mask` | bool | `[B, {f}]` | true on real frames |
| `{ONNX_FILES['audio']}` | `segments` | float32 | `[B, {l}, 3, {SEGMENT_LENGTH}, {SEGMENT_LENGTH}]` | standardised log-mel segments; padding rows 0 |
| `{ONNX_FILES['audio']}` | `segment_mask` | bool | `[B, {l}]` | true on real segments |
| `{ONNX_FILES['audio']}` | `audio_type` | int64 | `[B]` | 0 = [VB] speech, 1 = [NB] other sounds (no other value) |

**Text.** OpenAI CLIP's byte-level BPE: `clip4vla.text.tokenize(texts, context_length={s}, truncate=True)`.
A text longer than {s} tokens (SOT and EOT included) is cut and its last id forced to EOT.

**Frames.** Up to {f} frames per clip at 1 frame per second (`{pre.frame_sampling}` choice when the clip has
more seconds than that); each 8-bit RGB frame resized (antialiased bicubic) so its short side is {side} px,
centre-cropped to {side}x{side}, scaled to [0, 1] and normalised per RGB channel with mean ({mean}) and std ({std}). Real
frames come first, the remaining rows are zeros with the mask false. `clip4vla.video.load_video_frames(path,
max_frames={f}, sampling="{pre.frame_sampling}", size={side})` returns exactly one clip's `frames` and
`frame_mask`.

**Audio.** The sound decoded to float32 stereo at {rate} Hz (a clip longer than {seconds} s centre-cropped to
it), turned into a 3-channel log-mel spectrogram `[3, T, {SEGMENT_LENGTH}]` (left, mean of left and right, right)
by the `{pre.frontend}` front-end: {_frontend_summary(pre.frontend)}. The spectrogram is cut along time into
{SEGMENT_LENGTH}-frame segments (the last one zero-padded), each standardised per channel over its
{SEGMENT_LENGTH}x{SEGMENT_LENGTH} plane, `(x - mean) / (std + {_STD_EPS:g})` (not the image mean and std); at most
{l} segments are kept (`{pre.selection}` selection), the remaining rows are zeros with the mask false.
`clip4vla.audio.to_segments(clip4vla.audio.log_mel(clip4vla.audio.load_audio(path, max_seconds={seconds}),
frontend="{pre.frontend}"), {l}, "{pre.selection}")` returns exactly one clip's `segments` and `segment_mask`.

**Audio type.** {_audio_type_note(model, pre)}

**Long media.** One row encodes one window. `clip4vla.embed` encodes a clip shorter than 1.5 windows
(`clip4vla.embed.window_seconds`: the longer of {pre.max_frames} s of frames and {pre.max_segments} audio segments) as one
row like this, and longer media as several equal windows whose unit rows it averages and normalises again.
"""


def _audio_type_note(model: CLIP4VLA, pre: Preprocessing) -> str:
    """What to feed as ``audio_type`` for this model, from its type token and its training record."""
    if not model.audio.use_type_token:
        return "This model has no audio type token: `audio_type` is part of the signature but ignored."
    if pre.audio_type is None:
        return ("The model was trained with each clip's own type: 0 ([VB]) for speech, 1 ([NB]) for other "
                "sounds (`clip4vla.embed` can decide with its speech detector, `audio_type=\"auto\"`).")
    if pre.audio_type in AUDIO_TYPE_IDS:
        return (f"The model was trained with `audio_type: {pre.audio_type}`: feed "
                f"{AUDIO_TYPE_IDS[pre.audio_type]} for every clip.")
    return (f"The model was trained with `audio_type: {pre.audio_type}`, which the ONNX file cannot "
            "express (it takes the ids 0 and 1 only), so its audio embeddings differ from the training-time ones.")


def _frontend_summary(frontend: str) -> str:
    """One line on a log-mel front-end, its numbers read from ``clip4vla.audio.frontend`` itself."""
    from clip4vla.audio import frontend as fe

    if frontend == "kaldi":
        return (f"Kaldi fbank as `torchaudio.compliance.kaldi.fbank` computes it, {fe.N_MELS} mel bins, "
                f"{fe._KALDI_FRAME_MS:g} ms Hamming window every {fe._KALDI_SHIFT_MS:g} ms, pre-emphasis "
                f"{fe._KALDI_PREEMPHASIS:g}, mel banks from {fe._KALDI_LOW_HZ:g} Hz to Nyquist, natural log, "
                "no dither, `snip_edges=True`")
    if frontend == "reference":
        return (f"librosa's `power_to_db(melspectrogram(...))`: centred Hann STFT of {fe._REF_N_FFT} samples "
                f"every {fe._REF_HOP}, {fe.N_MELS} Slaney mel filters up to {fe._REF_FMAX:g} Hz, dB floored "
                f"{fe._REF_TOP_DB:g} dB below each channel's maximum")
    raise ValueError(f"unknown frontend {frontend!r}; choose one of {fe.FRONTENDS}")
