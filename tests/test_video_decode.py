"""Video decoding at 1 fps: the sampling rule, selection options, spans and errors.

The test videos carry their frame index in the pixels (``media_factory.frame_index``), so every
test checks *which* frames were picked, not only how many.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import clip4vla.video.decode as decode
from clip4vla.media_errors import MediaError
from clip4vla.video import (
    VideoDecodeError,
    choose_seconds,
    clip_transform,
    load_prepared_frames,
    load_video_frames,
    read_one_fps,
)
from media_factory import (
    frame_index,
    write_audio_only,
    write_empty,
    write_garbage,
    write_truncated,
    write_video,
)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    return {
        # 4.3 s at 10 fps: frames 0..42, seconds 0..4
        "short": write_video(d / "short.mp4", seconds=4.3, fps=10, gop=10),
        # 20 s, keyframe every 2 s, B-frames: exercises seeking between targets
        "long": write_video(d / "long.mp4", seconds=20, fps=10, gop=20, audio=False),
        "ntsc": write_video(d / "ntsc.mp4", seconds=5, fps=Fraction(30000, 1001), gop=15, audio=False),
        # MPEG-TS clocks start at a non-zero time: seconds must still count from the first frame
        "ts": write_video(d / "offset.ts", seconds=3.2, fps=10, gop=10, audio=False),
        "mkv": write_video(d / "clip.mkv", seconds=4.3, fps=10, gop=10, audio=False),
        # UCF101-style AVI with MPEG-4 part 2 and B-frames (packet pts = dts + delay)
        "avi": write_video(d / "clip.avi", seconds=4.3, fps=25, codec="mpeg4", bframes=2, audio=False),
        "dir": d,
    }


def indices(path, **kw):
    seconds, rgb, _ = read_one_fps(path, **kw)
    return seconds, [frame_index(img) for img in rgb]


# ------------------------------------------------------------------------------ the 1-fps rule
def test_one_frame_per_whole_second(media):
    seconds, idx = indices(media["short"])
    assert seconds == [0, 1, 2, 3, 4]
    assert idx == [0, 10, 20, 30, 40]


def test_ntsc_rate_takes_first_frame_at_or_after_each_second(media):
    fps = Fraction(30000, 1001)
    seconds, idx = indices(media["ntsc"])
    # first frame i with i/fps >= s (1.001 s for s = 1, ...), computed independently of the decoder
    expected = [math.ceil(s * fps) for s in range(5)]
    assert seconds == [0, 1, 2, 3, 4]
    assert idx == expected == [0, 30, 60, 90, 120]


@pytest.mark.parametrize("key", ["ts", "mkv"])
def test_other_containers_count_from_stream_start(media, key):
    seconds, idx = indices(media[key])
    n = 4 if key == "ts" else 5
    assert seconds == list(range(n))
    assert idx == [10 * s for s in range(n)]


def test_video_info(media):
    _, _, info = read_one_fps(media["short"])
    assert info.fps == pytest.approx(10.0)
    assert info.duration == pytest.approx(4.3, abs=0.05)
    assert info.seconds == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------ spans
@pytest.mark.parametrize(
    "start,end,expected",
    [
        (1.5, 3.2, [1, 2, 3]),  # bins overlapping [1.5, 3.2): 1, 2, 3
        (2.0, None, [2, 3, 4]),
        (None, 2.0, [0, 1]),  # end is exclusive
        (2.0, 3.0, [2]),
        (3.9, 4.1, [3, 4]),
    ],
)
def test_span_keeps_overlapping_seconds(media, start, end, expected):
    seconds, idx = indices(media["short"], start=start, end=end)
    assert seconds == expected
    assert idx == [10 * s for s in expected]


def test_span_on_long_video_seeks_to_the_right_frames(media):
    seconds, idx = indices(media["long"], start=13.2, end=17.0)
    assert seconds == [13, 14, 15, 16]
    assert idx == [130, 140, 150, 160]


def test_span_outside_the_video_is_an_error(media):
    with pytest.raises(VideoDecodeError, match="no frames in the span"):
        load_video_frames(media["short"], start=10.0, end=12.0)


@pytest.mark.parametrize("start,end", [(3.0, 2.0), (2.0, 2.0), (-1.0, None), (float("nan"), None)])
def test_invalid_span_is_a_value_error(media, start, end):
    with pytest.raises(ValueError):
        load_video_frames(media["short"], start=start, end=end)


# ------------------------------------------------------------------------ selection + order
def test_uniform_head_tail(media):
    n, k = 20, 6
    uniform = np.linspace(0, n - 1, k).astype(int).tolist()
    assert uniform == [0, 3, 7, 11, 15, 19]  # the REF rounding (truncation)
    for sampling, secs in [("uniform", uniform), ("head", list(range(k))), ("tail", list(range(n - k, n)))]:
        seconds, idx = indices(media["long"], choose=lambda a, s=sampling: choose_seconds(a, k, s))
        assert seconds == secs, sampling
        assert idx == [10 * s for s in secs], sampling


def test_fewer_seconds_than_max_frames_keeps_all():
    assert choose_seconds([0, 1, 2], 12, "uniform") == [0, 1, 2]
    assert choose_seconds([0, 1, 2], 12, "tail") == [0, 1, 2]


def test_orders():
    secs = list(range(20))
    normal = choose_seconds(secs, 12)
    assert choose_seconds(secs, 12, order="reversed") == normal[::-1]
    a = choose_seconds(secs, 12, order="shuffled", generator=torch.Generator().manual_seed(3))
    b = choose_seconds(secs, 12, order="shuffled", generator=torch.Generator().manual_seed(3))
    c = choose_seconds(secs, 12, order="shuffled", generator=torch.Generator().manual_seed(4))
    assert a == b and sorted(a) == normal
    assert a != normal and a != c


@pytest.mark.parametrize("bad", [dict(sampling="middle"), dict(order="random"), dict(max_frames=0)])
def test_bad_options_rejected_before_decoding(tmp_path, bad):
    with pytest.raises(ValueError):
        load_video_frames(tmp_path / "does-not-exist.mp4", **bad)


# ------------------------------------------------------------------------- tensors + padding
def test_padding_mask_and_batched_transform(media):
    frames, mask = load_video_frames(media["short"], max_frames=8)
    assert frames.shape == (8, 3, 224, 224) and frames.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.tolist() == [True] * 5 + [False] * 3
    assert torch.count_nonzero(frames[5:]) == 0
    # the real rows are exactly the CLIP transform of the decoded 1-fps frames
    _, rgb, _ = read_one_fps(media["short"])
    expected = clip_transform(torch.from_numpy(rgb).permute(0, 3, 1, 2))
    assert torch.equal(frames[:5], expected)


def test_selection_order_reaches_the_tensors(media):
    normal, _ = load_video_frames(media["long"], max_frames=4, size=32)
    rev, mask = load_video_frames(media["long"], max_frames=4, size=32, order="reversed")
    assert normal.shape == (4, 3, 32, 32) and mask.all()
    assert torch.equal(rev, normal.flip(0))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    s1, _ = load_video_frames(media["long"], max_frames=4, size=32, order="shuffled", generator=g1)
    s2, _ = load_video_frames(media["long"], max_frames=4, size=32, order="shuffled", generator=g2)
    assert torch.equal(s1, s2)


def test_seek_route_equals_sequential_decoding(media, monkeypatch):
    """The fast path (probe + seek) and the fallback (decode everything) pick identical pixels."""
    choose = lambda a: choose_seconds(a, 5)  # noqa: E731
    fast_secs, fast, _ = read_one_fps(media["long"], choose=choose)
    span_secs, span, _ = read_one_fps(media["long"], start=7.5, end=15.0)
    monkeypatch.setattr(decode, "_probe", lambda *a, **k: None)
    slow_secs, slow, _ = read_one_fps(media["long"], choose=choose)
    slow_span_secs, slow_span, _ = read_one_fps(media["long"], start=7.5, end=15.0)
    assert fast_secs == slow_secs == [0, 4, 9, 14, 19]
    assert np.array_equal(fast, slow)
    assert span_secs == slow_span_secs == list(range(7, 15))
    assert np.array_equal(span, slow_span)


@pytest.mark.parametrize("key", ["avi", "ts", "ntsc"])
def test_fast_and_sequential_routes_agree_on_other_formats(media, key, monkeypatch):
    fast_secs, fast, _ = read_one_fps(media[key])
    monkeypatch.setattr(decode, "_probe", lambda *a, **k: None)
    slow_secs, slow, _ = read_one_fps(media[key])
    assert fast_secs == slow_secs and len(fast_secs) >= 3
    assert np.array_equal(fast, slow)


def test_elementary_stream_without_timestamps_uses_the_fallback(media, tmp_path):
    """A raw .h264 stream has no packet timestamps and cannot seek: frames come from the rate."""
    import av

    raw = tmp_path / "clip.h264"
    with av.open(str(media["short"])) as src, av.open(str(raw), "w", format="h264") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    seconds, rgb, info = read_one_fps(raw)
    assert info.fps and seconds == list(range(len(seconds))) and len(seconds) >= 1
    # the stream does not know its rate; frame i is shown at i / info.fps
    assert [frame_index(img) for img in rgb] == [math.ceil(s * info.fps - 1e-6) for s in seconds]


# ------------------------------------------------------------------------------------ errors
def _assert_decode_error(path, match):
    with pytest.raises(VideoDecodeError, match=match) as info:
        load_video_frames(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, MediaError)


def test_missing_file(tmp_path):
    _assert_decode_error(tmp_path / "nope.mp4", "not found")


def test_zero_length_file(tmp_path):
    _assert_decode_error(write_empty(tmp_path / "empty.mp4"), "zero-length")


def test_garbage_file(tmp_path):
    _assert_decode_error(write_garbage(tmp_path / "garbage.mp4"), "not a readable media container")


def test_no_video_stream_names_the_streams_the_file_has(tmp_path):
    _assert_decode_error(write_audio_only(tmp_path / "sound.m4a"), r"no video stream \(the file has 1 audio stream\)")


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_mp4(media, tmp_path, fraction):
    _assert_decode_error(write_truncated(media["short"], tmp_path / "cut.mp4", fraction), "readable|truncated|corrupt")


def test_truncated_mkv_detected_from_declared_duration(media, tmp_path):
    # Matroska still opens when cut short; the stream's DURATION tag reveals the truncation.
    _assert_decode_error(write_truncated(media["mkv"], tmp_path / "cut.mkv", 0.6), "truncated")


def test_directory_is_not_a_video(tmp_path):
    _assert_decode_error(tmp_path, "directory")


def test_prepared_frame_errors(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found"):
        load_prepared_frames(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no prepared frames"):
        load_prepared_frames(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "000000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match="unreadable prepared frame"):
        load_prepared_frames(bad)
