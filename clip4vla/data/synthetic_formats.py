"""The synthetic clips laid out in the real formats of every corpus the readers support.

Every config in ``configs/`` names a real corpus (HowTo100M, AudioSet, MSR-VTT, VATEX, AudioCaps,
ESC-50, UCF101). To run each of them end to end without the real data, :func:`write_corpus_format`
takes a generated synthetic dataset (``clip4vla.data.synthetic``, MSR-VTT layout) and writes a
*format twin*: the same clips under that corpus's file names, in its annotation format, read by its
own reader — so a test exercises the exact code path a user's download takes.

=============  =====================================================================================
format         what is written under ``out_dir``
=============  =====================================================================================
``msrvtt``     ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``, ``MSRVTT_JSFUSION_test.csv``,
               ``MSRVTT_val.csv``; ``videos/<video_id>.mp4``
``vatex``      ``vatex_training_v1.0.json``, ``vatex_validation_v1.0.json``,
               ``vatex_public_test_english_v1.1.json`` (10 captions per clip);
               ``videos/<ytid>_<start:06d>_<end:06d>.mp4``
``audiocaps``  ``train.csv`` (1 caption per clip), ``val.csv`` / ``test.csv`` (5 per clip);
               ``videos/<youtube_id>.mp4`` (sounding clips only, as AudioCaps)
``howto100m``  ``caption.json`` (each clip a video with two transcript spans); ``videos/<id>.mp4``
``audioset``   ``unbalanced_train_segments.csv`` (AudioSet's commented header), ``ontology.json``;
               ``videos/<ytid>_<start>.mp4`` (sounding clips; label = the sound heard)
``esc50``      ``meta/esc50.csv``, ``audio/<fold>-<id>-A-<target>.wav`` (44.1 kHz mono, 5 s)
``ucf101``     ``ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt``,
               ``UCF-101/<Class>/v_<Class>_g<gg>_c<cc>.avi`` (MPEG-4 + MP3, classes = colours)
``manifest``   ``manifest.csv`` (``clip4vla.data.readers.manifest``: video, caption, start, end, split,
               label = colour, audio_type); ``media/<video_id>.mp4``, ``media/<video_id>.wav``
               (sound-only clips), windows of some training videos
=============  =====================================================================================

A twin never changes its source: annotations are written anew under ``out_dir`` and media are
hard links (or copies) of the source's files or new files made from them, so the quick start's
``data/synthetic`` can serve as the source of any number of twins. ``out_dir`` may not be the
source or lie inside it.

Splits follow the synthetic split (train / validate / test). HowTo100M and AudioSet are
pre-training corpora: only training clips are written. With ``prepared=True`` the media are also
prepared (``clip4vla.data.prepare``) into ``out_dir/prepared``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf

from clip4vla.data.synthetic import SAMPLE_RATE

__all__ = ["FORMATS", "write_corpus_format"]

FORMATS = ("msrvtt", "vatex", "audiocaps", "howto100m", "audioset", "esc50", "ucf101", "manifest")
ESC50_RATE = 44100
ESC50_SECONDS = 5.0
UCF_GROUPS = 25  # UCF101: 25 groups; split s tests on groups 7(s-1)+1 .. 7s


def _videos(source: Path) -> list[dict[str, Any]]:
    data = json.loads((source / "MSRVTT_data.json").read_text(encoding="utf-8"))
    return data["videos"]


def _captions(source: Path) -> dict[str, list[str]]:
    data = json.loads((source / "MSRVTT_data.json").read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for s in data["sentences"]:
        out.setdefault(s["video_id"], []).append(s["caption"])
    return out


def _link(src: Path, dst: Path) -> None:
    """Hard link (no copy of the media) where the file system allows, else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _csv(path: Path, header: list[str], rows: list[list[Any]], comment_lines: list[str] | None = None) -> None:
    buf = io.StringIO()
    for line in comment_lines or []:
        buf.write(line + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    if comment_lines is None:
        writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _split(video: dict[str, Any]) -> str:
    return {"validate": "val"}.get(video["split"], video["split"])


# ------------------------------------------------------------------------------------ formats


def _msrvtt(source: Path, out: Path) -> None:
    for name in ("MSRVTT_data.json", "MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_val.csv"):
        _link(source / name, out / name)
    for video in _videos(source):
        _link(source / "videos" / f"{video['video_id']}.mp4", out / "videos" / f"{video['video_id']}.mp4")


def _vatex_id(video: dict[str, Any]) -> str:
    return f"{video['video_id']}_{0:06d}_{math.ceil(video['end time']):06d}"


def _vatex(source: Path, out: Path) -> None:
    captions = _captions(source)
    files = {"train": "vatex_training_v1.0.json", "val": "vatex_validation_v1.0.json",
             "test": "vatex_public_test_english_v1.1.json"}
    entries: dict[str, list[dict[str, Any]]] = {k: [] for k in files}
    for video in _videos(source):
        vid = _vatex_id(video)
        caps = captions[video["video_id"]]
        entries[_split(video)].append({"videoID": vid, "enCap": (caps * 2)[:10]})  # VATEX: 10 per clip
        _link(source / "videos" / f"{video['video_id']}.mp4", out / "videos" / f"{vid}.mp4")
    for split, name in files.items():
        (out / name).write_text(json.dumps(entries[split], indent=1), encoding="utf-8")


def _audiocaps(source: Path, out: Path) -> None:
    captions = _captions(source)
    rows: dict[str, list[list[Any]]] = {"train": [], "val": [], "test": []}
    cap_id = 0
    for video in _videos(source):
        if not video["has_audio"]:
            continue
        split, vid = _split(video), video["video_id"]
        for caption in captions[vid][: 1 if split == "train" else 5]:
            cap_id += 1
            rows[split].append([cap_id, vid, 0, caption])
        _link(source / "videos" / f"{vid}.mp4", out / "videos" / f"{vid}.mp4")
    for split, split_rows in rows.items():
        _csv(out / f"{split}.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], split_rows)


def _howto100m(source: Path, out: Path) -> None:
    captions = _captions(source)
    transcripts: dict[str, dict[str, list]] = {}
    for video in _videos(source):
        if _split(video) != "train":
            continue
        vid, duration = video["video_id"], float(video["end time"])
        words = captions[vid][0].split()
        half = len(words) // 2
        transcripts[vid] = {  # two spans covering the clip, the caption spoken in two halves
            "start": [0.0, round(duration / 2, 2)],
            "end": [round(duration / 2, 2), duration],
            "text": [" ".join(words[:half]), " ".join(words[half:])],
        }
        _link(source / "videos" / f"{vid}.mp4", out / "videos" / f"{vid}.mp4")
    (out / "caption.json").write_text(json.dumps(transcripts), encoding="utf-8")


def _label_id(sound: str) -> str:
    return f"/m/syn_{sound}"


def _audioset(source: Path, out: Path) -> None:
    rows, sounds = [], set()
    for video in _videos(source):
        if _split(video) != "train" or not video["has_audio"]:
            continue
        sound = video["attributes"]["sound"]
        sounds.add(sound)
        start, end = 0.0, float(video["end time"])
        rows.append([video["video_id"], f"{start:.3f}", f"{end:.3f}", f'"{_label_id(sound)}"'])
        _link(source / "videos" / f"{video['video_id']}.mp4", out / "videos" / f"{video['video_id']}_0.mp4")
    header = [
        "# Segments csv created by clip4vla.data.synthetic_formats",
        f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(sounds)}, num_positive_labels={len(rows)}",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    # AudioSet writes ", " between fields and quotes the label list
    body = header + [", ".join(map(str, row)) for row in rows]
    (out / "unbalanced_train_segments.csv").write_text("\n".join(body) + "\n", encoding="utf-8")
    ontology = [{"id": _label_id(s), "name": s.capitalize(), "description": f"synthetic {s}"} for s in sorted(sounds)]
    (out / "ontology.json").write_text(json.dumps(ontology, indent=1), encoding="utf-8")


def _decode_audio(path: Path) -> np.ndarray | None:
    """Stereo float32 ``[2, N]`` at the synthetic rate, or None without an audio stream."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        chunks = [frame.to_ndarray() for frame in container.decode(audio=0)]
    return np.concatenate(chunks, axis=1).astype(np.float32)


def _esc50(source: Path, out: Path) -> None:
    sound_names = sorted({v["attributes"]["sound"] for v in _videos(source) if v["has_audio"]})
    rows = []
    n_out = int(ESC50_RATE * ESC50_SECONDS)
    for i, video in enumerate(v for v in _videos(source) if v["has_audio"]):
        sound = video["attributes"]["sound"]
        target, fold = sound_names.index(sound), 1 + i % 5
        filename = f"{fold}-{100000 + i}-A-{target}.wav"
        stereo = _decode_audio(source / "videos" / f"{video['video_id']}.mp4")
        mono = stereo.mean(axis=0)
        # ESC-50 ships 5-s, 44.1 kHz mono clips: resample (linear is enough here) and pad
        t_out = np.arange(n_out) / ESC50_RATE
        resampled = np.interp(t_out, np.arange(len(mono)) / SAMPLE_RATE, mono, right=0.0).astype(np.float32)
        (out / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(out / "audio" / filename, resampled, ESC50_RATE, subtype="PCM_16")
        rows.append([filename, fold, target, sound, "False", f"syn{i}", "A"])
    _csv(out / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)


def _ucf_class(video: dict[str, Any]) -> str:
    return video["attributes"]["colour"].capitalize() + "Shape"


def _write_avi(src: Path, dst: Path) -> None:
    """Re-encode an mp4 as UCF101 ships its clips: AVI with MPEG-4 video and MP3 audio (if any)."""
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        fps = int(round(float(stream.average_rate)))
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    audio = _decode_audio(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w", format="avi") as out:
        vs = out.add_stream("mpeg4", rate=fps)
        vs.width, vs.height = frames[0].shape[1], frames[0].shape[0]
        vs.pix_fmt = "yuv420p"
        vs.codec_context.thread_count = 1
        if audio is not None:
            aus = out.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="stereo")
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if audio is not None:
            size = aus.codec_context.frame_size or 1152
            fmt = aus.codec_context.format.name
            for start in range(0, audio.shape[1], size):
                chunk = np.ascontiguousarray(audio[:, start:start + size])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = SAMPLE_RATE, start
                if fmt != "fltp":
                    frame = av.AudioResampler(format=fmt, layout="stereo", rate=SAMPLE_RATE).resample(frame)[0]
                out.mux(aus.encode(frame))
            out.mux(aus.encode())


def _ucf101(source: Path, out: Path) -> None:
    videos = _videos(source)
    classes = sorted({_ucf_class(v) for v in videos})
    lists = out / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
    counts: dict[tuple[str, int], int] = {}
    entries = []  # (class, group, relative path)
    for i, video in enumerate(videos):
        cls, group = _ucf_class(video), 1 + i % UCF_GROUPS
        counts[(cls, group)] = counts.get((cls, group), 0) + 1
        relative = f"{cls}/v_{cls}_g{group:02d}_c{counts[(cls, group)]:02d}.avi"
        _write_avi(source / "videos" / f"{video['video_id']}.mp4", out / "UCF-101" / relative)
        entries.append((cls, group, relative))
    for split in (1, 2, 3):
        test_groups = range(7 * (split - 1) + 1, 7 * split + 1)
        train = [f"{rel} {classes.index(cls) + 1}\r\n" for cls, g, rel in entries if g not in test_groups]
        test = [f"{rel}\r\n" for cls, g, rel in entries if g in test_groups]
        (lists / f"trainlist0{split}.txt").write_text("".join(train))
        (lists / f"testlist0{split}.txt").write_text("".join(test))


def _manifest(source: Path, out: Path) -> None:
    """Your-own-data layout: ``manifest.csv`` over ``media/``, with the three kinds of rows a user's
    folder has: videos with (or without) sound, sound files alone (every 4th sounding clip, as a
    16 kHz ``.wav``), and windows of a longer file (every 3rd other training clip, cut in two halves,
    each half a clip with two of the captions)."""
    from clip4vla.data.readers.manifest import write_manifest_csv

    captions = _captions(source)
    rows: list[dict[str, Any]] = []
    sounding = 0
    for i, video in enumerate(_videos(source)):
        vid, split = video["video_id"], _split(video)
        caps, label = captions[vid], video["attributes"]["colour"]
        common = {"split": split, "label": label}
        if video["has_audio"] and sounding % 4 == 0:
            stereo = _decode_audio(source / "videos" / f"{vid}.mp4")
            (out / "media").mkdir(parents=True, exist_ok=True)
            sf.write(out / "media" / f"{vid}.wav", stereo.T, SAMPLE_RATE, subtype="PCM_16")
            rows += [{"video": f"media/{vid}.wav", "caption": c, "audio_type": "nb", **common} for c in caps]
            sounding += 1
            continue
        sounding += bool(video["has_audio"])
        _link(source / "videos" / f"{vid}.mp4", out / "media" / f"{vid}.mp4")
        duration = float(video["end time"])
        if split == "train" and i % 3 == 0:
            half = round(duration / 2, 2)
            rows += [{"video": f"media/{vid}.mp4", "caption": c, "start": 0, "end": half, **common} for c in caps[:2]]
            rows += [{"video": f"media/{vid}.mp4", "caption": c, "start": half, "end": duration, **common}
                     for c in caps[2:4]]
            continue
        rows += [{"video": f"media/{vid}.mp4", "caption": c, "audio_type": video["audio_type"], **common} for c in caps]
    write_manifest_csv(out / "manifest.csv", rows)


_WRITERS = {
    "msrvtt": _msrvtt, "vatex": _vatex, "audiocaps": _audiocaps, "howto100m": _howto100m,
    "audioset": _audioset, "esc50": _esc50, "ucf101": _ucf101, "manifest": _manifest,
}
# where each format keeps its media, for the preparation pass
_MEDIA_DIRS = {"esc50": "audio", "ucf101": "UCF-101"}


def write_corpus_format(source: str | os.PathLike, fmt: str, out_dir: str | os.PathLike,
                        prepared: bool = False, workers: int = 2) -> Path:
    """Lay the synthetic dataset at ``source`` out as corpus ``fmt`` in ``out_dir`` (module doc).

    ``source`` is only read. ``prepared``: also write the prepared media (1-fps frames, 16 kHz wav)
    to ``out_dir/prepared``.
    """
    if fmt not in _WRITERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    source, out = Path(source), Path(out_dir)
    if not (source / "MSRVTT_data.json").is_file():
        raise FileNotFoundError(f"{source}: not a synthetic dataset (no MSRVTT_data.json); run scripts/make_synthetic.py")
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ValueError(f"{out}: a format twin is written outside its source {source}, which it must not change; "
                         "choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    _WRITERS[fmt](source, out)
    if prepared:
        from clip4vla.data.prepare import prepare_videos

        prepare_videos(out / _MEDIA_DIRS.get(fmt, "videos"), out / "prepared", workers=workers, progress=False)
    return out
