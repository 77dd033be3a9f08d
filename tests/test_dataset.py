"""The tri-modal dataset layer: one sample format, bad media skipped (never replaced), replayable RNG.

Media are tiny mp4/mkv files written in ``tmp_path`` by ``media_factory`` (no downloads): two clips
with a stereo tone, one without an audio track, and the broken kinds the Data issue lists
(garbage bytes, zero-length, missing, truncated so that the video fails, truncated so that only
the audio fails).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from clip4vla.data.dataset import (
    AUDIO_TYPE_IDS,
    SampleOptions,
    SkipReport,
    TriModalDataset,
    collate_samples,
    media_key,
    sample_generator,
)
from clip4vla.data.records import ClipRecord
from clip4vla.models.preprocessing import Preprocessing
from clip4vla.text import tokenize
from media_factory import write_empty, write_garbage, write_truncated, write_video

OPTIONS = SampleOptions(inputs=Preprocessing(max_words=16, max_frames=4, max_segments=3), masked_audio=True)
SIZE = OPTIONS.inputs.image_size
CAPTIONS = (
    "a green bar slides to the right",
    "a tone plays while a bar moves",
    "two sine tones under a moving bar",
    "blue ramp with a green stripe",
    "the stripe travels across the frame",
)
GOOD = ("tone", "long", "silent")
BAD = ("garbage", "empty", "missing", "cut_video", "cut_audio")
# The JPEG route (quality 95, 4:4:4) after the CLIP transform, as measured and bounded in
# tests/test_prepare_data.py: mean |raw - prepared| <= 0.02, max <= 0.4 at single pixels.
JPEG_MEAN_TOL = 0.02
JPEG_MAX_TOL = 0.4


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    write_video(d / "tone.mp4", seconds=3.0, fps=10)  # 2 audio segments (one partial), 3 frames
    write_video(d / "long.mp4", seconds=5.0, fps=10, width=96, height=64)  # 3 segments, 5 s -> 4 frames
    write_video(d / "silent.mp4", seconds=2.0, fps=10, audio=False)
    write_garbage(d / "garbage.mp4")
    write_empty(d / "empty.mp4")
    write_video(d / "whole.mkv", seconds=3.0, fps=10)
    # mkv cut at half: the video stream stops early; cut at 90 %: every frame second decodes but
    # the audio ends before the container's declared duration
    write_truncated(d / "whole.mkv", d / "cut_video.mkv", 0.5)
    write_truncated(d / "whole.mkv", d / "cut_audio.mkv", 0.9)
    return d


def record(media: Path, vid: str, captions=CAPTIONS[:1], audio_type: str = "vb", **kw) -> ClipRecord:
    path = {"cut_video": "cut_video.mkv", "cut_audio": "cut_audio.mkv"}.get(vid, f"{vid}.mp4")
    return ClipRecord(vid, video_path=media / path, captions=captions, audio_type=audio_type, source="test", **kw)


@pytest.fixture(scope="module")
def records(media) -> list[ClipRecord]:
    types = {"silent": "nb", "long": "nb"}
    return [record(media, vid, audio_type=types.get(vid, "vb")) for vid in GOOD + BAD]


@pytest.fixture(scope="module")
def samples(records) -> list[dict]:
    """Every record decoded once with ``OPTIONS`` (seed 0, epoch 0), shared by the read-only tests."""
    ds = TriModalDataset(records, OPTIONS)
    return [ds[i] for i in range(len(ds))]


def assert_samples_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ----------------------------------------------------------------------------------- format
def test_sample_keys_shapes_dtypes(records, samples):
    for index, s in enumerate(samples):
        assert set(s) == {"text", "frames", "frame_mask", "audio", "audio_mask", "masked_audio",
                          "audio_type", "index", "video_id", "valid", "has_text", "skip_reason"}
        assert s["text"].shape == (16,) and s["text"].dtype == torch.long
        assert s["frames"].shape == (4, 3, SIZE, SIZE) and s["frames"].dtype == torch.float32
        assert s["frame_mask"].shape == (4,) and s["frame_mask"].dtype == torch.bool
        for key in ("audio", "masked_audio"):
            assert s[key].shape == (3, 3, 224, 224) and s[key].dtype == torch.float32
        assert s["audio_mask"].shape == (3,) and s["audio_mask"].dtype == torch.bool
        assert s["audio_type"].shape == () and s["audio_type"].dtype == torch.long
        assert s["index"] == index and s["video_id"] == records[index].video_id

    tone = samples[0]
    assert tone["valid"] and tone["skip_reason"] == ""
    assert tone["frame_mask"].tolist() == [True, True, True, False]  # 3 s at 1 fps, padded to 4
    assert tone["audio_mask"].tolist() == [True, True, False]  # 3 s of 10 ms frames: 2 segments
    assert tone["frames"][3].abs().sum() == 0 and tone["frames"][:3].abs().sum() > 0
    assert tone["audio"][2].abs().sum() == 0 and tone["audio"][:2].abs().sum() > 0
    expected = tokenize(CAPTIONS[0], context_length=16, truncate=True)[0]
    assert torch.equal(tone["text"], expected)

    no_mask = TriModalDataset(records[:1], dataclasses.replace(OPTIONS, masked_audio=False))[0]
    assert "masked_audio" not in no_mask
    assert torch.equal(no_mask["audio"], tone["audio"])  # the mask draw does not touch the clean copy


def test_audio_type_ids(media):
    ds = TriModalDataset([record(media, "tone", audio_type="vb"), record(media, "tone", audio_type="nb")], OPTIONS)
    assert AUDIO_TYPE_IDS == {"vb": 0, "nb": 1}
    assert [int(ds[i]["audio_type"]) for i in range(2)] == [0, 1]


def test_silent_clip_is_valid_data_with_empty_audio(samples):
    s = samples[GOOD.index("silent")]
    assert s["valid"] and s["skip_reason"] == ""
    assert s["audio_mask"].tolist() == [False, False, False]
    assert s["audio"].abs().sum() == 0 and s["masked_audio"].abs().sum() == 0
    assert s["frame_mask"].tolist() == [True, True, False, False]  # the vision side is still there
    assert s["frames"][:2].abs().sum() > 0
    assert int(s["audio_type"]) == 1


@pytest.mark.parametrize(
    "vid, error",
    [
        ("garbage", "VideoDecodeError"),
        ("empty", "VideoDecodeError"),
        ("missing", "VideoDecodeError"),
        ("cut_video", "VideoDecodeError"),
        ("cut_audio", "AudioDecodeError"),  # frames decoded fine, then the audio failed
    ],
)
def test_unreadable_media_gives_placeholder_never_other_media(records, samples, vid, error):
    index = (GOOD + BAD).index(vid)
    s = samples[index]
    assert s["valid"] is False
    assert s["skip_reason"].startswith(f"{error}:"), s["skip_reason"]
    path_name = records[index].video_path.name
    assert path_name in s["skip_reason"]  # the reason names the file
    # its own identity, nothing else's media: every tensor is zero, every mask empty
    assert s["video_id"] == vid and s["index"] == index
    for key in ("text", "frames", "audio", "masked_audio"):
        assert s[key].abs().sum() == 0, key
    assert not s["frame_mask"].any() and not s["audio_mask"].any()
    assert int(s["audio_type"]) == AUDIO_TYPE_IDS[records[index].audio_type]


def test_reasons_name_the_failure(samples):
    reasons = {vid: samples[(GOOD + BAD).index(vid)]["skip_reason"] for vid in BAD}
    assert "not found" in reasons["missing"]
    assert "zero-length" in reasons["empty"]
    assert "truncated" in reasons["cut_video"] and "truncated" in reasons["cut_audio"]


# ----------------------------------------------------------------------------------- masking
def _masked_cells(plane: torch.Tensor) -> torch.Tensor:
    """Cells of one standardised plane that held 0 dB: they all map to one value, the commonest."""
    return plane == torch.mode(plane.flatten()).values


def test_masked_copy_blanks_time_and_frequency_spans_only(samples):
    s = samples[GOOD.index("long")]
    assert s["audio_mask"].tolist() == [True, True, True]
    clean, masked = s["audio"], s["masked_audio"]
    columns = []
    for seg in range(3):
        cells = torch.stack([_masked_cells(masked[seg, c]) for c in range(3)])
        # the same time/frequency mask on the three channels
        assert torch.equal(cells[0], cells[1]) and torch.equal(cells[0], cells[2])
        # it is made of whole time rows and whole mel columns, and covers part of the plane
        rows, cols = cells[0].all(1), cells[0].all(0)
        assert torch.equal(cells[0], rows[:, None] | cols[None, :])
        assert 0.2 < cells[0].float().mean() < 0.99
        assert not torch.equal(masked[seg], clean[seg])
        columns.append(cols)
        # elsewhere the masked copy is the clean one up to its own standardisation: an affine map
        for c in range(3):
            keep = ~cells[c]
            x, y = clean[seg, c][keep].double(), masked[seg, c][keep].double()
            design = torch.stack([x, torch.ones_like(x)], 1)
            fit = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
            assert fit[0] > 0
            assert (design @ fit - y).abs().max() < 1e-4
    # the mask is drawn on the whole spectrogram before cutting: mel bands span every segment
    assert torch.equal(columns[0], columns[1]) and torch.equal(columns[0], columns[2])


def test_masked_copy_keeps_the_segment_mask(samples):
    s = samples[GOOD.index("tone")]
    assert s["audio_mask"].tolist() == [True, True, False]
    per_segment = s["masked_audio"].flatten(1).abs().sum(1) > 0
    assert per_segment.tolist() == s["audio_mask"].tolist()


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_epoch_index_replays_exactly(media):
    recs = [record(media, "tone", captions=CAPTIONS), record(media, "long", captions=CAPTIONS)]
    a, b = TriModalDataset(recs, OPTIONS, seed=3), TriModalDataset(recs, OPTIONS, seed=3)
    b_second = b[1]  # visit order does not matter
    assert_samples_equal(a[0], b[0])
    assert_samples_equal(a[1], b_second)

    # a new epoch draws new masks (and may pick another caption); the clean media stay the same
    a.set_epoch(1)
    later = a[1]
    assert not torch.equal(later["masked_audio"], b_second["masked_audio"])
    assert torch.equal(later["audio"], b_second["audio"]) and torch.equal(later["frames"], b_second["frames"])
    # ... and so does another seed
    assert not torch.equal(TriModalDataset(recs, OPTIONS, seed=4)[1]["masked_audio"], b_second["masked_audio"])


def test_sample_generator_is_a_function_of_seed_epoch_index():
    draw = lambda *key: torch.rand(4, generator=sample_generator(*key))  # noqa: E731
    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert not torch.equal(draw(0, 1, 2), draw(0, 2, 1))
    assert not torch.equal(draw(0, 1, 2), draw(1, 1, 2))


def _loader_batches(dataset: TriModalDataset, workers: int) -> list[dict]:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, shuffle=False, num_workers=workers, collate_fn=collate_samples
    )
    return list(loader)


def test_dataloader_workers_give_identical_batches(media, records):
    recs = [record(media, "tone", captions=CAPTIONS), *records[1:3], records[3],
            record(media, "long", captions=CAPTIONS, audio_type="nb"), records[5]]
    ds = TriModalDataset(recs, OPTIONS, seed=7)
    ds.set_epoch(2)
    serial, parallel = _loader_batches(ds, 0), _loader_batches(ds, 2)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert_samples_equal(a, b)
    ids = [vid for batch in parallel for vid in batch["video_id"]]
    assert ids == [r.video_id for r in recs]  # every row keeps its own identity
    # the worker processes saw epoch 2, not the default 0
    ds.set_epoch(0)
    assert not torch.equal(_loader_batches(ds, 0)[0]["masked_audio"], serial[0]["masked_audio"])


# ------------------------------------------------------------------------ collate and skips
def test_collate_stacks_tensors_and_keeps_ids_as_lists(samples):
    samples = samples[:4]  # three good clips and the garbage file
    batch = collate_samples(samples)
    for key in ("text", "frames", "frame_mask", "audio", "audio_mask", "masked_audio", "audio_type"):
        assert isinstance(batch[key], torch.Tensor) and batch[key].shape[0] == 4, key
        assert torch.equal(batch[key], torch.stack([s[key] for s in samples])), key
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["valid"].dtype == torch.bool and batch["valid"].tolist() == [True, True, True, False]
    assert batch["video_id"] == ["tone", "long", "silent", "garbage"]
    assert isinstance(batch["skip_reason"], list) and batch["skip_reason"][:3] == ["", "", ""]
    assert batch["frames"][3].abs().sum() == 0 and batch["frames"][0].abs().sum() > 0


def test_skip_report_counts_and_summarises(samples):
    report = SkipReport()
    assert report.summary() == "no samples skipped"
    skipped = [report.update(collate_samples(samples[i : i + 2])) for i in range(0, 8, 2)]
    assert skipped == [0, 1, 2, 2]  # (tone, long) (silent, garbage) (empty, missing) (cut_video, cut_audio)
    assert report.count == 5
    assert report.reasons == {"VideoDecodeError": 4, "AudioDecodeError": 1}
    summary = report.summary()
    assert summary.startswith("5 samples skipped")
    assert "VideoDecodeError x4" in summary and "AudioDecodeError x1" in summary
    assert "garbage: VideoDecodeError" in summary  # examples name the clip and the error
    assert "silent" not in summary  # a clip without audio is not a skip


# ------------------------------------------------------------------------------ the cache
def test_cache_decoded_is_bit_identical_and_really_cached(media, tmp_path):
    copy = tmp_path / "tone.mp4"
    shutil.copy(media / "tone.mp4", copy)
    recs = [ClipRecord("tone", video_path=copy, captions=CAPTIONS), record(media, "long", captions=CAPTIONS)]
    cached = TriModalDataset(recs, dataclasses.replace(OPTIONS, cache_decoded=True), seed=1)
    fresh = TriModalDataset(recs, OPTIONS, seed=1)
    assert_samples_equal(cached[0], fresh[0])  # the first visit fills the cache
    cached.set_epoch(3)
    fresh.set_epoch(3)
    expected = fresh[0]
    copy.unlink()  # the second visit must not need the file any more
    second = cached[0]
    assert second["valid"], second["skip_reason"]
    assert_samples_equal(second, expected)  # new epoch's mask and caption, same decoded media
    assert not fresh[0]["valid"]  # (without the cache the file is really gone)


@pytest.mark.parametrize("workers", [0, 2])
def test_fill_cache_decodes_in_workers_and_changes_no_sample(media, records, samples, tmp_path, workers):
    copy = tmp_path / "long.mp4"
    shutil.copy(media / "long.mp4", copy)
    recs = [dataclasses.replace(r, video_path=copy) if r.video_id == "long" else r for r in records]
    ds = TriModalDataset(recs, dataclasses.replace(OPTIONS, cache_decoded=True))
    rng_before = torch.get_rng_state()
    ds.fill_cache(workers, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the run's global RNG is untouched
    good = [i for i, vid in enumerate(GOOD + BAD) if vid in GOOD]
    assert set(ds._cache) == {media_key(recs[i]) for i in good}  # unreadable records are not cached
    copy.unlink()  # served from the cache now
    for i in range(len(ds)):
        assert_samples_equal(ds[i], samples[i])  # bad ones fail again on visit, with their reason
    with pytest.raises(ValueError, match="cache_decoded"):
        TriModalDataset(records, OPTIONS).fill_cache(workers)


def test_cache_decoded_rejects_shuffled_frames(records):
    with pytest.raises(ValueError, match="cache_decoded"):
        TriModalDataset(records, dataclasses.replace(OPTIONS, cache_decoded=True, frame_order="shuffled"))


def test_empty_record_list_is_refused():
    with pytest.raises(ValueError, match="no records"):
        TriModalDataset([], OPTIONS)


# ---------------------------------------------------------------------------- captions
def test_random_caption_varies_by_epoch_and_first_caption_otherwise(media):
    tokens = [tokenize(c, context_length=16, truncate=True)[0] for c in CAPTIONS]
    rec = [record(media, "silent", captions=CAPTIONS)]

    def picks(random_caption: bool) -> list[int]:
        ds = TriModalDataset(rec, dataclasses.replace(OPTIONS, random_caption=random_caption))
        out = []
        for epoch in range(8):
            ds.set_epoch(epoch)
            text = ds[0]["text"]
            out.append(next(i for i, t in enumerate(tokens) if torch.equal(t, text)))  # one of its own
        return out

    chosen = picks(True)
    assert len(set(chosen)) >= 2, chosen
    assert picks(True) == chosen  # and replayable
    assert picks(False) == [0] * 8


# -------------------------------------------------------------------------- prepared media
def test_prepared_route_matches_raw(media, tmp_path):
    from clip4vla.data.prepare import prepare_videos

    raw_dir, out = tmp_path / "raw", tmp_path / "prepared"
    raw_dir.mkdir()
    for vid in ("long", "silent"):
        shutil.copy(media / f"{vid}.mp4", raw_dir / f"{vid}.mp4")
    summary = prepare_videos(raw_dir, out, workers=1, progress=False)
    assert (summary.done, summary.failed) == (2, [])
    recs = [
        ClipRecord(vid, video_path=raw_dir / f"{vid}.mp4", audio_path=out / "audio" / f"{vid}.wav",
                   frames_dir=out / "frames" / vid, captions=CAPTIONS[:1])
        for vid in ("long", "silent")
    ]
    raw = TriModalDataset(recs, OPTIONS)
    prepared = TriModalDataset(recs, dataclasses.replace(OPTIONS, media="prepared"))
    for i in range(2):
        a, b = raw[i], prepared[i]
        assert a["valid"] and b["valid"], (a["skip_reason"], b["skip_reason"])
        assert torch.equal(a["frame_mask"], b["frame_mask"]) and torch.equal(a["audio_mask"], b["audio_mask"])
        diff = (a["frames"] - b["frames"]).abs()
        assert diff.mean() <= JPEG_MEAN_TOL and diff.max() <= JPEG_MAX_TOL
        # The wav holds load_audio's float32 samples (32-bit float), so the spectrogram, the
        # segments and (same generator) the masked copy are bit-identical: tolerance 0.
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["masked_audio"], b["masked_audio"])
        assert torch.equal(a["text"], b["text"])
    assert not prepared[1]["audio_mask"].any()  # the silent clip's empty wav is silence, not an error

    # prepared media that went missing are skipped with the prepared path in the reason
    shutil.rmtree(out / "frames" / "long")
    s = prepared[0]
    assert not s["valid"] and "frames" in s["skip_reason"] and s["frames"].abs().sum() == 0


# ------------------------------------------------------------------ media errors vs our bugs
def test_huge_but_finite_audio_is_skipped_with_its_reason(tmp_path):
    """A broken encoder's ~1e20 samples decode as finite floats but overflow the spectrogram."""
    from audio_media import tone, write_sound

    write_sound(tmp_path / "loud.wav", tone(440.0, 2.0) * 1e20, subtype="FLOAT")
    write_sound(tmp_path / "fine.wav", tone(440.0, 2.0), subtype="FLOAT")
    ds = TriModalDataset([ClipRecord(name, audio_path=tmp_path / f"{name}.wav", captions=("x",), source="test")
                          for name in ("loud", "fine")], OPTIONS)
    loud, fine = ds[0], ds[1]
    assert loud["valid"] is False and "spectrogram is not finite" in loud["skip_reason"]
    assert "loud.wav" in loud["skip_reason"] and "5e+19" in loud["skip_reason"]  # the peak is named
    assert fine["valid"] and fine["audio_mask"].any()


def test_a_bug_in_our_own_code_is_not_a_skipped_sample(records, monkeypatch):
    """Only media errors are skips: a front-end bug must stop the run with its traceback."""
    import clip4vla.data.dataset as dataset_module

    def broken(*args, **kwargs):
        raise RuntimeError("shape bug in the front-end")

    monkeypatch.setattr(dataset_module, "log_mel", broken)
    ds = TriModalDataset(records[:1], OPTIONS)
    with pytest.raises(RuntimeError, match="shape bug"):
        ds[0]
    monkeypatch.setattr(dataset_module, "log_mel", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad index")))
    with pytest.raises(ValueError, match="bad index"):
        ds[0]
