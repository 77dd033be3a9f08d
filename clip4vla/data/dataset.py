"""One sample format for every corpus: records in, tri-modal tensors out.

Readers (``clip4vla.data.readers``) only parse annotations into ``ClipRecord`` lists. This module
turns a record into tensors (text tokens, frames, audio segments, optional masked copy) with the
same decoders for every dataset, so pre-training, fine-tuning and evaluation see identical inputs.

Unreadable media never kill a run and are never replaced by another clip's media: the sample is
returned as a placeholder with ``valid=False`` and a reason, the collate function keeps the batch
shape (so all ranks gather equal-sized batches) and reports the skipped ids upwards.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import logging
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from clip4vla.audio import (
    AudioDecodeError,
    MediaError,
    NoAudioError,
    empty_segments,
    load_audio,
    log_mel,
    segments_with_masked_copy,
    to_segments,
)
from clip4vla.audio.speech import heard_audio_type
from clip4vla.config import AudioConfig, DataConfig
from clip4vla.data.records import ClipRecord
from clip4vla.data.shards import ShardStore
from clip4vla.data.span_table import record_sources
from clip4vla.models.audio import AUDIO_TYPE_IDS
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.text import default_tokenizer, tokenize
from clip4vla.video import load_prepared_frames, load_video_frames

log = logging.getLogger(__name__)

# What unreadable media raise: the sample is skipped with the reason, never the run. Media
# errors only: any other exception is a bug in our code and stops the run with its traceback.
UNREADABLE = (MediaError,)
SEGMENT_SIZE = 224


@dataclasses.dataclass
class SampleOptions:
    """How a record becomes tensors (a subset of the run config, so workers pickle little)."""

    # What a model file records about its inputs (frames, segments, words, front-end); the rest
    # of these options say how to read and augment the media, which no model file needs to know.
    inputs: Preprocessing = Preprocessing()
    frame_order: str = "normal"
    media: str = "raw"
    # media "shards": (corpus, shard folder) of every corpus in use; a record's ``source`` picks one
    shards: tuple[tuple[str, str], ...] = ()
    masked_audio: bool = False
    mask_mode: str = "paper"
    # Training picks one caption at random per visit; evaluation always takes the first.
    random_caption: bool = True
    # Keep decoded frames and the (unmasked) spectrogram in memory after the first visit (or after
    # TriModalDataset.fill_cache). Only for small sets with num_workers=0 (a worker's cache dies
    # with the worker at the epoch's end).
    cache_decoded: bool = False
    # Captioning: also the teacher-forcing pair caption_input = [SOT] + words[:max_words-1] and
    # caption_target = words[:max_words-1] + [EOT] (IGNORE_INDEX where padded)
    caption_targets: bool = False


    @classmethod
    def from_config(cls, data: DataConfig, audio: AudioConfig, **task_specific: Any) -> SampleOptions:
        """Options of a run's config; ``task_specific`` sets ``masked_audio``, ``random_caption``."""
        inputs = Preprocessing(
            max_words=data.max_words,
            max_frames=data.max_frames,
            frame_sampling=data.frame_sampling,
            frontend=audio.frontend,
            max_segments=audio.max_segments,
            selection=audio.selection,
            max_seconds=audio.max_seconds,
        )
        return cls(
            inputs=inputs,
            frame_order=data.frame_order,
            media=data.media,
            shards=shard_folders(data),
            mask_mode=audio.mask_mode,
            cache_decoded=data.cache_decoded,
            **task_specific,
        )

    @classmethod
    def for_inference(cls, preprocessing: Preprocessing, data: DataConfig | None = None) -> SampleOptions:
        """Deterministic options that reproduce a model's training inputs (no masking, first caption),
        reading the media the way ``data`` says (raw files without it)."""
        data = data if data is not None else DataConfig()  # the default media: raw files
        return cls(inputs=preprocessing, media=data.media, shards=shard_folders(data), masked_audio=False,
                   random_caption=False)

    def evaluation(self) -> SampleOptions:
        """The same inputs for evaluation: no masked copy, the first caption, frames in order."""
        return dataclasses.replace(self, masked_audio=False, random_caption=False, frame_order="normal")

    def preprocessing(self, audio_type: str | float | None) -> Preprocessing:
        """What a model file records about these inputs (``clip4vla.models.preprocessing``)."""
        return dataclasses.replace(self.inputs, audio_type=audio_type)


def shard_folders(data: DataConfig) -> tuple[tuple[str, str], ...]:
    """``(corpus, data.<corpus>.shards_dir)`` of every corpus section that names one when the media
    are read from shards, else none (corpora keep their own shards: ids need only be unique within
    a corpus)."""
    if data.media != "shards":
        return ()
    sections = [(f.name, getattr(data, f.name)) for f in dataclasses.fields(data)]
    return tuple((name, s.shards_dir) for name, s in sections if getattr(s, "shards_dir", None))


def shard_id(record: ClipRecord) -> str:
    """The id a shard store holds the record's media under: its file's, for a window of a file
    that other clips share (a manifest's windows), else the clip's own."""
    return record.media_id or record.video_id


IGNORE_INDEX = -100  # cross-entropy's ignore_index: caption positions that are padding


def caption_pair(caption: str, max_words: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(input [max_words], target [max_words], truncated)`` for teacher forcing.

    ``input = [SOT] + words[:max_words-1]`` padded with 0, ``target = words[:max_words-1] + [EOT]``
    padded with :data:`IGNORE_INDEX`; ``truncated`` says the caption had more words.
    """
    tokenizer = default_tokenizer()
    words = tokenizer.encode(caption)
    kept = words[: max_words - 1]
    inputs = torch.zeros(max_words, dtype=torch.long)
    targets = torch.full((max_words,), IGNORE_INDEX, dtype=torch.long)
    inputs[: len(kept) + 1] = torch.tensor([tokenizer.sot_id] + kept)
    targets[: len(kept) + 1] = torch.tensor(kept + [tokenizer.eot_id])
    return inputs, targets, len(words) > len(kept)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """RNG for one sample visit, independent of worker count and order, so augmentation replays exactly."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TriModalDataset(torch.utils.data.Dataset):
    """Map-style dataset over ``ClipRecord``s producing the one sample dict of ``docs/INTERFACES.md``."""

    def __init__(self, records: Sequence[ClipRecord], options: SampleOptions, seed: int = 0) -> None:
        if len(records) == 0:
            raise ValueError("dataset has no records: check the annotation files and split")
        # a list, or a sequence that builds records on access (HowTo100M's compact span table)
        self.records = records if isinstance(records, collections.abc.Sequence) else list(records)
        self.options = options
        self.seed = seed
        self.epoch = 0
        if options.cache_decoded and options.frame_order == "shuffled":
            raise ValueError("cache_decoded needs a deterministic frame order (frame_order != 'shuffled')")
        # decoded media by media_key(record): rows that share a clip (a caption each, when the
        # captions are unfolded for teacher forcing: 5 to 20 per clip) share one entry
        self._cache: dict[tuple, tuple] = {}
        # media "shards": opened here, so a missing folder or index fails at start-up
        self.stores = {corpus: ShardStore.shared([folder]) for corpus, folder in options.shards}
        if options.media == "shards":
            unknown = sorted(record_sources(self.records) - set(self.stores))
            if unknown:
                raise ValueError(f"data.media is shards but no shards_dir is set for {unknown}")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (non-persistent workers pick it up when they are re-created)."""
        self.epoch = epoch

    # -- modalities ---------------------------------------------------------------------------

    def _caption(self, record: ClipRecord, generator: torch.Generator) -> str:
        captions = [c for c in record.captions if c]
        if not captions:  # a media-only clip (a pre-training manifest row without a caption)
            return ""
        pick = 0
        if self.options.random_caption and len(captions) > 1:
            pick = int(torch.randint(len(captions), (1,), generator=generator))
        return captions[pick]

    def _frames(self, record: ClipRecord, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        opts = self.options
        kwargs = dict(
            max_frames=opts.inputs.max_frames,
            sampling=opts.inputs.frame_sampling,
            order=opts.frame_order,
            size=opts.inputs.image_size,
            generator=generator,
        )
        if opts.media == "shards":  # a clip stored without frames (a sound file) gets empty ones
            return self.stores[record.source].frames(shard_id(record), start=record.start, end=record.end, **kwargs)
        if opts.media == "prepared" and record.frames_dir is not None:
            return load_prepared_frames(record.frames_dir, start=record.start, end=record.end, **kwargs)
        if record.video_path is None:  # audio-only corpora (ESC-50)
            return (
                torch.zeros(opts.inputs.max_frames, 3, opts.inputs.image_size, opts.inputs.image_size),
                torch.zeros(opts.inputs.max_frames, dtype=torch.bool),
            )
        return load_video_frames(record.video_path, start=record.start, end=record.end, **kwargs)

    def _spectrogram(self, record: ClipRecord) -> tuple[torch.Tensor | None, str | None]:
        """``(dB spectrogram [3, T, 224] of the record's span or None for a clip without audio, the
        type audio_type "auto" picked for it or None for a record of a fixed type)``.

        "auto" runs the speech detector of ``embed_audio(audio_type="auto")`` on the sound the model
        hears (this span, ``max_seconds`` of it); decoding is deterministic, so the choice is too.
        """
        opts = self.options
        use_prepared = opts.media == "prepared" or record.video_path is None or record.audio_from is not None
        path = record.audio_path if use_prepared and record.audio_path is not None else record.video_path
        try:
            if opts.media == "shards":  # a paired silent clip reads its donor's sound
                path = record.audio_from or shard_id(record)
                waveform = self.stores[record.source].audio(path, start=record.start, end=record.end,
                                                            max_seconds=opts.inputs.max_seconds)
            elif path is None:
                return None, _heard_type(record, None)
            else:
                waveform = load_audio(path, start=record.start, end=record.end, max_seconds=opts.inputs.max_seconds)
        except NoAudioError:
            return None, _heard_type(record, None)
        spectrogram = log_mel(waveform, frontend=opts.inputs.frontend)
        if not bool(torch.isfinite(spectrogram).all()):
            # finite but absurd samples (a broken encoder: ~1e18 and up) overflow the power spectrum
            raise AudioDecodeError(
                f"{path}: the spectrogram is not finite (peak sample amplitude {float(waveform.abs().max()):.3g})"
            )
        return spectrogram, _heard_type(record, waveform)

    def _audio(self, spectrogram: torch.Tensor | None, generator: torch.Generator) -> dict[str, torch.Tensor]:
        opts = self.options
        out: dict[str, torch.Tensor] = {}
        if spectrogram is None:
            # A silent clip is data, not an error: empty mask, fusion falls back to vision.
            segments, mask = empty_segments(opts.inputs.max_segments)
            out["audio"], out["audio_mask"] = segments, mask
            if opts.masked_audio:
                out["masked_audio"] = segments.clone()
            return out
        if opts.masked_audio:
            segments, mask, masked = segments_with_masked_copy(
                spectrogram, opts.inputs.max_segments, opts.inputs.selection, generator, opts.mask_mode
            )
            out["masked_audio"] = masked
        else:
            segments, mask = to_segments(spectrogram, opts.inputs.max_segments, opts.inputs.selection)
        out["audio"], out["audio_mask"] = segments, mask
        return out

    def _decoded(self, record: ClipRecord, generator: torch.Generator) -> tuple:
        """``(frames, frame_mask, spectrogram, heard type)``: the part of a sample worth caching."""
        frames, frame_mask = self._frames(record, generator)
        return frames, frame_mask, *self._spectrogram(record)  # [3, T, 224] dB, "vb" / "nb" / None

    def fill_cache(self, num_workers: int, progress: bool = True) -> None:
        """Decode every record not cached yet in ``num_workers`` processes (``cache_decoded``).

        Otherwise the first epoch decodes one clip at a time in the training process while the
        model waits. The cached values are what ``__getitem__`` would have stored (decoding draws
        no random numbers when the cache is allowed), so training is unchanged bit for bit. A
        record that fails to decode is left out and fails again, with its reason, when visited.
        """
        if not self.options.cache_decoded:
            raise ValueError("fill_cache needs SampleOptions(cache_decoded=True)")
        firsts: dict[tuple, int] = {}  # one row per clip is decoded
        for index, record in enumerate(self.records):
            firsts.setdefault(media_key(record), index)
        todo = [i for key, i in firsts.items() if key not in self._cache]
        if not todo:
            return
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(_DecodeOnly(self), todo), batch_size=None, num_workers=num_workers,
            generator=torch.Generator(),  # workers' seeds must not come from (and move) the global RNG
        )
        for index, decoded in tqdm(loader, total=len(todo), desc="decode", unit="clip", disable=not progress):
            if decoded is not None:
                self._cache[media_key(self.records[index])] = decoded

    # -- sample -------------------------------------------------------------------------------

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        generator = sample_generator(self.seed, self.epoch, index)
        try:
            caption = self._caption(record, generator)
            text = tokenize(caption, context_length=self.options.inputs.max_words, truncate=True)[0]
            key = media_key(record) if self.options.cache_decoded else None
            decoded = self._cache.get(key) if key is not None else None
            # a clip cached for a record of a fixed type has no "auto" choice yet: decode it again
            if decoded is None or (record.audio_type == "auto" and decoded[3] is None):
                decoded = self._decoded(record, generator)
                if key is not None:
                    self._cache[key] = decoded
            frames, frame_mask, spectrogram, heard = decoded
            audio = self._audio(spectrogram, generator)
        except UNREADABLE as err:
            reason = f"{type(err).__name__}: {err}"
            log.warning("skipping sample %d (%s): %s", index, record.video_id, reason)
            return self.placeholder(index, record, reason)
        sample = {
            "text": text,
            "frames": frames,
            "frame_mask": frame_mask,
            "audio_type": torch.tensor(AUDIO_TYPE_IDS[heard if record.audio_type == "auto" else record.audio_type]),
            "index": index,
            "video_id": record.video_id,
            "valid": True,
            "has_text": bool(caption),
            "skip_reason": "",
        }
        sample.update(audio)
        if self.options.caption_targets:
            inputs, targets, truncated = caption_pair(caption, self.options.inputs.max_words)
            sample.update(caption_input=inputs, caption_target=targets, caption_truncated=truncated)
        return sample

    def placeholder(self, index: int, record: ClipRecord, reason: str) -> dict[str, Any]:
        """All-zero sample with empty masks: keeps batch shapes, contributes nothing to the loss."""
        opts = self.options
        segments, mask = empty_segments(opts.inputs.max_segments)
        sample = {
            "text": torch.zeros(opts.inputs.max_words, dtype=torch.long),
            "frames": torch.zeros(opts.inputs.max_frames, 3, opts.inputs.image_size, opts.inputs.image_size),
            "frame_mask": torch.zeros(opts.inputs.max_frames, dtype=torch.bool),
            "audio": segments,
            "audio_mask": mask,
            # "auto" could not listen to unreadable media: [NB], and the row contributes nothing anyway
            "audio_type": torch.tensor(AUDIO_TYPE_IDS.get(record.audio_type, AUDIO_TYPE_IDS["nb"])),
            "index": index,
            "video_id": record.video_id,
            "valid": False,
            "has_text": False,
            "skip_reason": reason,
        }
        if opts.masked_audio:
            sample["masked_audio"] = segments.clone()
        if opts.caption_targets:
            sample.update(caption_input=torch.zeros(opts.inputs.max_words, dtype=torch.long),
                          caption_target=torch.full((opts.inputs.max_words,), IGNORE_INDEX, dtype=torch.long),
                          caption_truncated=False)
        return sample


def _heard_type(record: ClipRecord, waveform: torch.Tensor | None) -> str | None:
    """What audio_type "auto" picks for the record's sound (None for a record of a fixed type)."""
    if record.audio_type != "auto":
        return None
    chosen = heard_audio_type(waveform)
    log.debug("%s: audio type auto -> %s (speech detector)", record.video_id, chosen)
    return chosen


def media_key(record: ClipRecord) -> tuple:
    """What decoding a record reads (everything but its captions): equal keys decode equally.

    Keying the decoded-media cache by it keeps each clip once: per row, the synthetic caption set's
    4200 (clip, caption) pairs held 9.6 GB (2.3 MB each) where its 840 clips take 1.9 GB.
    """
    return (record.source, record.video_id, record.video_path, record.audio_path, record.frames_dir, record.start,
            record.end, record.audio_from)


class _DecodeOnly(torch.utils.data.Dataset):
    """``index -> (index, decoded media or None)`` of a :class:`TriModalDataset`, for ``fill_cache``."""

    def __init__(self, dataset: TriModalDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, tuple | None]:
        ds = self.dataset
        try:
            return index, ds._decoded(ds.records[index], sample_generator(ds.seed, ds.epoch, index))
        except UNREADABLE:
            return index, None  # __getitem__ decodes it again and reports the reason


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack one batch; ids and skip reasons stay Python lists for logging."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif key in ("valid", "has_text", "caption_truncated"):
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif key == "index":
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch


def usable_rows(batch: dict[str, Any]) -> torch.Tensor:
    """``[B]`` bool: rows that can carry a tri-modal pair (readable media, some frames, some audio).

    The one definition shared by the training loss and zero-shot evaluation.
    """
    return batch["valid"] & batch["frame_mask"].any(1) & batch["audio_mask"].any(1)


class SkipReport:
    """Counts skipped samples and their reasons over a run, for the log and the final summary."""

    def __init__(self) -> None:
        self.count = 0
        self.reasons: Counter[str] = Counter()
        self.examples: list[str] = []

    def update(self, batch: dict[str, Any]) -> int:
        skipped = 0
        for vid, valid, reason in zip(batch["video_id"], batch["valid"].tolist(), batch["skip_reason"]):
            if valid:
                continue
            skipped += 1
            self.reasons[reason.split(":")[0]] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{vid}: {reason}")
        self.count += skipped
        return skipped

    def summary(self) -> str:
        if not self.count:
            return "no samples skipped"
        kinds = ", ".join(f"{k} x{n}" for k, n in self.reasons.most_common())
        return f"{self.count} samples skipped ({kinds}); e.g. " + "; ".join(self.examples[:3])
