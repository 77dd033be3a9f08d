"""The ``manifest`` corpus: your own media files and a CSV / TSV / JSONL of captions.

Reader tests use empty files with media extensions (the reader checks names and existence, it
never decodes); the one decoding test uses the session's synthetic clips.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest

from clip4vla.config import ConfigError, RetrievalConfig, load_config
from clip4vla.data.corpora import read_split
from clip4vla.data.readers.manifest import read_manifest
from clip4vla.data.records import AnnotationError


def media(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def write(path: Path, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def config(path: Path | list, *extra: str) -> RetrievalConfig:
    value = json.dumps([str(p) for p in path]) if isinstance(path, list) else str(path)
    return load_config(RetrievalConfig, None, ["data.corpus=manifest", f"data.manifest.path={value}", *extra])


FIVE_LINES = """video,caption,split
dog.mp4,a dog runs on the beach,train
dog.mp4,"a dog, wet, shakes ""itself"" dry",train
cat.mp4,a cat sleeps,val
rain.wav,rain on a roof,test
"""


def test_csv_rows_become_clips_with_all_their_captions(tmp_path):
    media(tmp_path, "dog.mp4", "cat.mp4", "rain.wav")
    data = config(write(tmp_path / "m.csv", FIVE_LINES)).data
    train = read_split(data, "manifest", "train", "retrieval")
    assert len(train) == 1 and train[0].video_id == "dog"
    assert train[0].captions == ("a dog runs on the beach", 'a dog, wet, shakes "itself" dry')  # RFC 4180 quoting
    assert train[0].video_path == tmp_path / "dog.mp4" and train[0].audio_path is None
    unfolded = read_split(data, "manifest", "train", "retrieval", unfold_captions=True)
    assert [r.captions for r in unfolded] == [(c,) for c in train[0].captions]
    rain = read_split(data, "manifest", "test", "caption")[0]  # a sound file alone: no video
    assert rain.video_path is None and rain.audio_path == tmp_path / "rain.wav"
    assert read_split(data, "manifest", "val", "retrieval")[0].video_id == "cat"


def test_bom_crlf_quoted_newlines_tsv_and_jsonl_read_alike(tmp_path):
    media(tmp_path, "a.mp4", "b.mp4")
    csv_text = 'video,caption\na.mp4,"two\nlines"\nb.mp4,plain\n'
    variants = {
        "bom_crlf.csv": ("\ufeff" + csv_text, "\r\n"),
        "plain.tsv": ("video\tcaption\na.mp4\ttwo lines\nb.mp4\tplain\n", "\n"),
        "rows.jsonl": ('{"video": "a.mp4", "caption": ["two lines"]}\n{"video": "b.mp4", "caption": "plain"}\n', "\n"),
    }
    for name, (text, newline) in variants.items():
        table = read_manifest(write(tmp_path / name, text, newline=newline), split_fractions=(1, 0, 0))
        records = table.records("train", unfold=False)
        assert [r.video_id for r in records] == ["a", "b"], name
        assert records[1].captions == ("plain",), name
        assert " ".join(records[0].captions[0].split()) == "two lines", name


def test_columns_mapping_root_and_windows(tmp_path):
    media(tmp_path / "clips", "long.mp4")
    text = "filepath,title,start,end\nlong.mp4,first part,0,10\nlong.mp4,second part,10,20.5\nlong.mp4,also first,0,10\n"
    manifest = write(tmp_path / "open_clip.csv", text)
    data = config(manifest, f"data.manifest.root={tmp_path / 'clips'}", "data.manifest.columns={video: filepath, caption: title}",
                  "data.manifest.split_fractions=[1, 0, 0]").data
    records = read_split(data, "manifest", "train", "retrieval")
    assert [(r.video_id, r.start, r.end, r.captions) for r in records] == [
        ("long@0-10", 0.0, 10.0, ("first part", "also first")),
        ("long@10-20.5", 10.0, 20.5, ("second part",)),
    ]


def test_hash_split_keeps_files_together_and_does_not_move_when_rows_are_added(tmp_path):
    names = [f"v{i}.mp4" for i in range(60)]
    media(tmp_path, *names)
    rows = "".join(f"{n},caption {i},0,1\n{n},caption {i} b,1,2\n" for i, n in enumerate(names))
    small = read_manifest(write(tmp_path / "a.csv", "video,caption,start,end\n" + rows))
    extra = "".join(f"new{i}.mp4,new {i}\n" for i in range(20))
    media(tmp_path, *(f"new{i}.mp4" for i in range(20)))
    big = read_manifest(write(tmp_path / "b.csv", "video,caption,start,end\n" + rows + extra.replace("\n", ",,\n")))

    def split_of(table):
        out = {}
        for split in table.split_names:
            for r in table.records(split, unfold=False):
                out.setdefault(r.video_id.split("@")[0], set()).add(split)
        return out

    before, after = split_of(small), split_of(big)
    assert all(len(s) == 1 for s in before.values())  # both windows of a file in one split
    assert {k: after[k] for k in before} == before
    assert set().union(*before.values()) == {"train", "val", "test"}


def test_labels_audio_types_and_audio_column(tmp_path):
    media(tmp_path, "a.mp4", "b.mp4", "a_sound.wav")
    text = "video,caption,label,audio_type,audio\na.mp4,x,zebra,nb,a_sound.wav\nb.mp4,y,ant,,\n"
    data = config(write(tmp_path / "m.csv", text), "data.manifest.split_fractions=[1, 0, 0]").data
    a, b = read_split(data, "manifest", "train", "classification")
    assert (a.label, b.label) == (1, 0)  # classes in sorted order of their names
    assert (a.audio_type, b.audio_type) == ("nb", "vb")  # an empty value: data.manifest.audio_type
    assert a.audio_path == tmp_path / "a_sound.wav" and a.audio_from == "a_sound" and b.audio_from is None


def speech_and_tone(folder: Path) -> tuple[Path, Path]:
    """A voiced, intonated sound with pauses at a human pitch, and a steady 440 Hz tone (3 s each)."""
    import numpy as np
    from audio_media import write_sound

    rate = 16000
    t = np.arange(3 * rate) / rate
    phase = 2 * np.pi * np.cumsum(120 * 2 ** (0.3 * np.sin(2 * np.pi * 0.7 * t))) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 20)) * (np.mod(t, 0.3) < 0.2)  # syllables, pauses
    return (write_sound(folder / "voice.wav", (0.2 * voice).astype(np.float32)),
            write_sound(folder / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)))


def test_auto_audio_type_is_the_speech_detectors_choice_per_clip(tmp_path):
    """``auto`` rows get the token ``looks_like_speech`` picks from the clip's decoded sound ([VB] for
    the voice, [NB] for the tone), the same on every visit and from the decoded-media cache; rows of a
    fixed type keep it, whatever the detector would say."""
    import dataclasses

    from clip4vla.audio import load_audio
    from clip4vla.audio.speech import looks_like_speech
    from clip4vla.data.dataset import SampleOptions, TriModalDataset
    from clip4vla.models.audio import AUDIO_TYPE_IDS
    from clip4vla.models.preprocessing import Preprocessing

    voice, tone = speech_and_tone(tmp_path)
    text = "video,caption,start,end,audio_type\nvoice.wav,someone talks,,,auto\ntone.wav,a steady beep,,,\n" \
           "tone.wav,the beep said to be speech,0,2,vb\n"
    records = read_manifest(write(tmp_path / "m.csv", text), split_fractions=(1, 0, 0),
                            audio_type="auto").records("train", unfold=False)
    assert [r.audio_type for r in records] == ["auto", "auto", "vb"]  # an empty value: the default, auto
    options = SampleOptions(inputs=Preprocessing(max_frames=2, max_segments=2))
    detector = ["vb" if looks_like_speech(load_audio(p, max_seconds=options.inputs.max_seconds)) else "nb"
                for p in (voice, tone)]
    assert detector == ["vb", "nb"]
    expected = [AUDIO_TYPE_IDS[t] for t in (*detector, "vb")]
    dataset = TriModalDataset(records, options)
    assert [int(dataset[i]["audio_type"]) for i in range(3)] == expected
    dataset.set_epoch(3)
    assert [int(dataset[i]["audio_type"]) for i in range(3)] == expected
    cached = TriModalDataset(records, dataclasses.replace(options, cache_decoded=True))
    cached.fill_cache(num_workers=0, progress=False)
    assert [int(cached[i]["audio_type"]) for i in range(3)] == expected
    # one clip as a fixed-type and as an auto record share a cache entry, in either order
    fixed = dataclasses.replace(records[1], audio_type="vb")
    for pair, types in (([fixed, records[1]], ["vb", "nb"]), ([records[1], fixed], ["nb", "vb"])):
        both = TriModalDataset(pair, dataclasses.replace(options, cache_decoded=True))
        assert [int(both[i]["audio_type"]) for i in range(2)] == [AUDIO_TYPE_IDS[t] for t in types]


def test_the_configs_audio_type_is_the_default_and_may_be_auto(tmp_path):
    media(tmp_path, "a.mp4", "b.mp4")
    manifest = write(tmp_path / "m.csv", "video,caption,audio_type\na.mp4,x,nb\nb.mp4,y,\n")
    assert config(manifest).data.manifest.audio_type == "vb"  # unchanged default: every row [VB]
    data = config(manifest, "data.manifest.audio_type=auto", "data.manifest.split_fractions=[1, 0, 0]").data
    assert [r.audio_type for r in read_split(data, "manifest", "train", "retrieval")] == ["nb", "auto"]
    with pytest.raises(ConfigError, match="data.manifest.audio_type"):
        config(manifest, "data.manifest.audio_type=speech")


def error_of(tmp_path: Path, text: str, name: str = "m.csv", encoding: str = "utf-8", **kwargs) -> AnnotationError:
    media(tmp_path, "a.mp4", "b.mp4", "notes.txt")
    (tmp_path / "folder.mp4").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    with pytest.raises(AnnotationError) as info:
        read_manifest(path, known_splits=("train", "val", "test"), **kwargs)
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("text, line, field, words", [
    ("file,caption\na.mp4,x\n", 1, "video", "header has ['file', 'caption']"),  # a missing column
    ("video,caption,start,end\na.mp4,x,5,5\n", 2, "start", "start 5 must be before end 5"),
    ("video,caption,start,end\na.mp4,x,-1,5\n", 2, "start", "non-negative"),
    ("video,caption,start,end\na.mp4,x,1,\n", 2, "end", "needs both start and end"),
    ("video,caption,split\na.mp4,x,train\nb.mp4,y,dev\n", 3, "split", "unknown split 'dev'"),
    ("video,caption\na.mp4,x\nb.mp4,y\na.mp4,x\n", 4, "caption", "duplicated row"),
    ("video,caption,split\na.mp4,x,train\nb.mp4,y,test\na.mp4,z,test\n", 4, "split", "is in split 'test' here"),
    ("video,caption\na.mp4,x\nb.mp4", 3, "caption", "was it cut off"),  # a cut last line
    ("video,caption\na.mp4,x\nb.mp4,\"cut inside a quote", 3, None, "cut off inside a quoted field"),
    ("video,caption\nfolder.mp4,x\n", 2, "video", "is a directory"),
    ("video,caption\nnotes.txt,x\n", 2, "video", "not a media file"),
    ("video,caption,audio_type\na.mp4,x,speech\n", 2, "audio_type", "must be one of ['vb', 'nb', 'auto']"),
])
def test_bad_rows_name_file_line_and_column(tmp_path, text, line, field, words):
    err = error_of(tmp_path, text)
    assert (err.line, err.field) == (line, field) and words in str(err)


def test_rows_without_a_split_beside_rows_with_one_name_the_first(tmp_path):
    err = error_of(tmp_path, '{"video": "a.mp4", "caption": "x", "split": "train"}\n{"video": "b.mp4", "caption": "y"}\n',
                   name="m.jsonl")
    assert (err.line, err.field) == (2, "split") and "1 rows have no split while others have one" in str(err)
    assert "m.jsonl line 1" in str(err)  # where a split was given


def test_non_utf8_and_cut_jsonl_name_their_line(tmp_path):
    err = error_of(tmp_path, "video,caption\na.mp4,caf\xe9\n", encoding="latin-1")
    assert err.line == 2 and "not UTF-8" in str(err)
    err = error_of(tmp_path, '{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4", "capt', name="m.jsonl")
    assert err.line == 2 and "was it cut off" in str(err)


def test_missing_media_error_lists_them_and_skip_drops_their_rows(tmp_path, caplog):
    media(tmp_path, "a.mp4")
    text = "video,caption\na.mp4,x\n" + "".join(f"gone{i}.mp4,y\n" for i in range(8))
    manifest = write(tmp_path / "m.csv", text)
    with pytest.raises(FileNotFoundError) as info:
        read_manifest(manifest, report_dir=tmp_path / "out")
    message = str(info.value)
    assert "8 of 9 media files" in message and "gone0.mp4" in message and "gone7.mp4" not in message
    listing = (tmp_path / "out" / "manifest_missing_media.txt").read_text().splitlines()
    assert len(listing) == 8 and listing[7].startswith(str(tmp_path / "gone7.mp4"))
    with caplog.at_level(logging.WARNING):
        table = read_manifest(manifest, missing="skip", report_dir=tmp_path / "out", split_fractions=(1, 0, 0))
    assert [r.video_id for r in table.records("train", unfold=False)] == ["a"]
    assert "their rows are skipped" in caplog.text


def test_climbing_paths_are_allowed_but_said_once(tmp_path, caplog):
    media(tmp_path, "outside.mp4", "also.mp4")
    (tmp_path / "inner").mkdir()
    manifest = write(tmp_path / "inner" / "m.csv", "video,caption\n../outside.mp4,x\n../also.mp4,y\n")
    with caplog.at_level(logging.WARNING):
        table = read_manifest(manifest, split_fractions=(1, 0, 0))
    assert len(table.records("train", unfold=False)) == 2
    assert caplog.text.count("climb out of their root") == 1 and "2 media paths" in caplog.text


def test_empty_split_and_unlabelled_classification_are_refused(tmp_path):
    media(tmp_path, "a.mp4")
    data = config(write(tmp_path / "m.csv", "video,caption,split\na.mp4,x,train\n")).data
    with pytest.raises(ValueError, match="split 'test' has 0 usable rows.*train: 1"):
        read_split(data, "manifest", "test", "retrieval")
    with pytest.raises(ValueError, match="needs a label for every clip"):
        read_split(data, "manifest", "train", "classification")


def test_several_manifests_are_concatenated_and_config_keys_are_checked(tmp_path):
    media(tmp_path, "a.mp4", "b.mp4")
    first = write(tmp_path / "one.csv", "video,caption\na.mp4,x\n")
    second = write(tmp_path / "two.jsonl", '{"video": "b.mp4", "caption": "y"}\n')
    data = config([first, second], "data.manifest.split_fractions=[1, 0, 0]").data
    assert [r.video_id for r in read_split(data, "manifest", "train", "retrieval")] == ["a", "b"]
    with pytest.raises(ConfigError, match="data.manifest.columns"):
        config(first, "data.manifest.columns={clip: file}")
    with pytest.raises(ConfigError, match="split_fractions"):
        config(first, "data.manifest.split_fractions=[0.5, 0.1]")
    with pytest.raises(ValueError, match=r"\.csv, \.tsv or \.jsonl"):
        read_manifest(write(tmp_path / "m.xlsx", "video\n"))


def test_a_window_past_the_end_of_the_file_is_skipped_at_decode(synthetic_root, tmp_path):
    from clip4vla.data.dataset import SampleOptions, TriModalDataset
    from clip4vla.models.preprocessing import Preprocessing

    video = synthetic_root / "videos" / "video0.mp4"
    manifest = write(tmp_path / "m.csv", f"video,caption,start,end\n{video},early,0,1\n{video},late,500,510\n")
    records = read_manifest(manifest, split_fractions=(1, 0, 0)).records("train", unfold=False)
    dataset = TriModalDataset(records, SampleOptions(inputs=Preprocessing(max_frames=2, max_segments=2)))
    assert dataset[0]["valid"] and not dataset[1]["valid"]
    assert "no frames in the span" in dataset[1]["skip_reason"]


def test_pairing_and_feature_extraction_read_the_manifest(synthetic_root, micro_export, tmp_path):
    import subprocess
    import sys

    from clip4vla.data.audio_pairs import apply_audio_pairs, read_audio_pairs
    from clip4vla.data.synthetic_formats import write_corpus_format

    repo = Path(__file__).resolve().parents[1]
    manifest = write_corpus_format(synthetic_root, "manifest", tmp_path / "mine") / "manifest.csv"

    def script(name: str, *args: str) -> str:
        done = subprocess.run([sys.executable, str(repo / "scripts" / name), *args], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    pairs = tmp_path / "pairs.json"
    script("pair_missing_audio.py", "--model", str(micro_export), "--config", str(repo / "configs" / "finetune_manifest.yaml"),
           "--out", str(pairs), "--set", f"data.manifest.path={manifest}", "--set", "data.num_workers=0")
    pairing = read_audio_pairs(pairs)
    assert pairing and all(donor.startswith("media/") for donor in pairing.values())
    data = config(manifest, f"data.audio_pairs={pairs}").data
    train, test = (read_split(data, "manifest", split, "retrieval") for split in ("train", "test"))
    assert apply_audio_pairs([train, test], train, pairing, "test") == len(pairing)  # splits.py's call
    paired = {r.video_id: r.audio_from for r in train + test if r.audio_from is not None}
    assert paired == pairing

    printed = script("extract_features.py", "--model", str(micro_export), "--manifest", str(manifest), "--out",
                     str(tmp_path / "features"), "--no-progress", "--device", "cpu")
    files = {row["video"] for row in csv.DictReader(manifest.open(encoding="utf-8"))}
    assert printed.startswith(f"{len(files)} files extracted, 0 skipped")


def test_linear_probe_and_zero_shot_on_the_label_column(synthetic_root, micro_export, tmp_path):
    import subprocess
    import sys

    from clip4vla.data.synthetic_formats import write_corpus_format

    repo = Path(__file__).resolve().parents[1]
    manifest = write_corpus_format(synthetic_root, "manifest", tmp_path / "mine") / "manifest.csv"
    done = subprocess.run([sys.executable, str(repo / "scripts" / "linear_probe.py"), "--model", str(micro_export),
                           "--no-progress", "--set", "data.corpus=manifest", "--set", f"data.manifest.path={manifest}",
                           "--set", "probe.weight_decays=[0.0001, 0.1]", "--set", "probe.max_iter=50",
                           "--set", f"train.output_dir={tmp_path / 'probe'}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])["manifest"]
    colours = {row["label"] for row in csv.DictReader(manifest.open(encoding="utf-8"))}
    assert report["classes"] == len(colours) and report["skipped"] == 0
    assert set(report["rows"]) == {"linear video+audio", "zero-shot av: a video of {}"}
    assert all(0 <= row["mean"] <= 100 for row in report["rows"].values())


def test_prepared_media_route_reads_the_folder_prepare_data_writes(synthetic_root, tmp_path):
    import subprocess
    import sys

    from clip4vla.data.dataset import SampleOptions, TriModalDataset
    from clip4vla.data.synthetic_formats import write_corpus_format
    from clip4vla.models.preprocessing import Preprocessing

    repo = Path(__file__).resolve().parents[1]
    twin = write_corpus_format(synthetic_root, "manifest", tmp_path / "mine")
    done = subprocess.run([sys.executable, str(repo / "scripts" / "prepare_data.py"), "--videos", str(twin / "media"),
                           "--out", str(tmp_path / "prep"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = config(twin / "manifest.csv", f"data.manifest.prepared_dir={tmp_path / 'prep'}", "data.media=prepared").data
    records = list(read_split(data, "manifest", "train", "pretrain"))
    sound = next(r for r in records if r.video_path is None)
    window = next(r for r in records if r.start is not None)
    assert sound.frames_dir is None and sound.audio_path.parent == tmp_path / "prep" / "audio"
    assert window.frames_dir.is_dir() and window.frames_dir.name == window.video_id.split("/")[-1].split("@")[0]
    options = SampleOptions(inputs=Preprocessing(max_frames=2, max_segments=2), media="prepared")
    samples = [TriModalDataset([r], options)[0] for r in (sound, window)]
    assert all(s["valid"] for s in samples)
    assert not samples[0]["frame_mask"].any() and samples[0]["audio_mask"].any()  # a sound file: no frames
    assert samples[1]["frame_mask"].any()


def test_shards_route_reads_what_prepare_data_writes_from_the_manifest(synthetic_root, micro_export, tmp_path):
    """``prepare_data.py --manifest --shards``: each file once under its manifest id with its clips'
    windows and captions in its JSON; the shards give the raw route's samples, and a retrieval
    fine-tune reads them with nothing skipped."""
    import os
    import subprocess
    import sys

    import torch

    from clip4vla.data.dataset import SampleOptions, TriModalDataset
    from clip4vla.data.readers.manifest import manifest_shard_files
    from clip4vla.data.shards import iter_samples, write_shards
    from clip4vla.data.synthetic_formats import write_corpus_format
    from clip4vla.models.preprocessing import Preprocessing

    repo = Path(__file__).resolve().parents[1]
    manifest = write_corpus_format(synthetic_root, "manifest", tmp_path / "mine") / "manifest.csv"
    shards = tmp_path / "shards"

    def script(name: str, *args: str) -> str:
        done = subprocess.run([sys.executable, str(repo / "scripts" / name), *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    folders = subprocess.run([sys.executable, str(repo / "scripts" / "prepare_data.py"), "--manifest", str(manifest),
                              "--out", str(shards)], capture_output=True, text=True, timeout=300)
    assert folders.returncode == 2 and "add --shards" in folders.stderr  # prepared folders: --videos ROOT
    printed = script("prepare_data.py", "--manifest", str(manifest), "--out", str(shards), "--shards", "--no-progress")
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    files = {row["video"].rsplit(".", 1)[0] for row in rows}
    assert printed.startswith(f"{len(files)} files: {len(files)} written") and " 0 unreadable" in printed
    stored = {json.loads(s["json"])["id"]: json.loads(s["json"]) for s in iter_samples(shards)}
    assert set(stored) == files  # each file once, windows and all, under the id the records use
    windowed = next(r for r in rows if r["start"])
    clips = stored[windowed["video"].rsplit(".", 1)[0]]["meta"]["clips"]
    assert len(clips) == 2 and [len(c["captions"]) for c in clips] == [2, 2]
    assert clips[0]["start"] == float(windowed["start"]) and clips[0]["id"].endswith(f"@0-{clips[0]['end']:g}")
    assert windowed["caption"] in clips[0]["captions"]

    with pytest.raises(ConfigError, match="data.manifest.shards_dir"):
        config(manifest, "data.media=shards")
    raw = config(manifest).data
    on_shards = config(manifest, "data.media=shards", f"data.manifest.shards_dir={shards}").data
    records = read_split(on_shards, "manifest", "train", "retrieval")
    assert [r.video_id for r in records] == [r.video_id for r in read_split(raw, "manifest", "train", "retrieval")]
    picked = [next(r for r in records if r.start is not None), next(r for r in records if r.video_path is None),
              next(r for r in records if r.start is None and r.video_path is not None)]  # window, sound, whole video
    base = SampleOptions(inputs=Preprocessing(max_frames=3, max_segments=2))
    from_shards = SampleOptions(inputs=base.inputs, media="shards", shards=(("manifest", str(shards)),))
    routes = [TriModalDataset(picked, base), TriModalDataset(picked, from_shards)]
    for i in range(len(picked)):
        a, b = (route[i] for route in routes)
        assert a["valid"] and b["valid"], b["skip_reason"]
        for key in ("frame_mask", "audio_mask", "text", "audio_type"):
            assert torch.equal(a[key], b[key]), (i, key)
        assert float((a["frames"] - b["frames"]).abs().mean()) <= 0.02  # JPEG (test_shards.py's tolerances)
        assert float((a["audio"] - b["audio"]).abs().mean()) <= 0.07  # 16-bit audio
    assert not routes[1][1]["frame_mask"].any() and routes[1][1]["audio_mask"].any()  # a sound file: no frames

    # an audio column: the separate sound file is shards too, read for the window of the video
    sound = next(r["video"] for r in rows if r["video"].endswith(".wav"))
    video = windowed["video"]
    paired = write(tmp_path / "mine" / "paired.csv", f"video,caption,start,end,audio\n{video},a,0,1,{sound}\n")
    table = read_manifest(paired, split_fractions=(1, 0, 0))
    files, _ = manifest_shard_files(table)
    assert sorted(files) == sorted(name.rsplit(".", 1)[0] for name in (video, sound))
    write_shards(files, tmp_path / "paired_shards", workers=1, progress=False)
    record = table.records("train", False)[0]
    paired_shards = SampleOptions(inputs=base.inputs, media="shards", shards=(("manifest", str(tmp_path / "paired_shards")),))
    a, b = (TriModalDataset([record], options)[0] for options in (base, paired_shards))
    assert b["valid"] and torch.equal(a["audio_mask"], b["audio_mask"]) and b["audio_mask"].any()
    assert float((a["audio"] - b["audio"]).abs().mean()) <= 0.07

    sizes = {"model.arch": "null", "data.num_workers": 0, "data.max_frames": 2, "audio.max_segments": 2,
             "train.batch_size": 4, "train.max_steps": 2, "train.eval_every_steps": 2, "train.log_every": 1,
             "train.precision": "fp32", "train.device": "cpu", "retrieval.fusion_layers": 1,
             "model.init_from": micro_export, "data.manifest.path": manifest, "data.media": "shards",
             "data.manifest.shards_dir": shards, "train.output_dir": tmp_path / "ft"}
    overrides = [arg for k, v in sizes.items() for arg in ("--set", f"{k}={v}")]
    summary = json.loads(script("finetune_retrieval.py", "--config", str(repo / "configs" / "finetune_manifest.yaml"),
                                *overrides).strip().splitlines()[-1])
    test = read_split(raw, "manifest", "test", "retrieval")
    assert summary["skipped"] == 0 and summary["av"]["n_videos"] == len(test)
    assert summary["av"]["n_texts"] == sum(len(r.captions) for r in test)


def test_training_writes_the_missing_media_list_into_its_output_folder(tmp_path):
    from clip4vla.data.dataset import SampleOptions
    from clip4vla.data.splits import split_datasets
    from clip4vla.models.preprocessing import Preprocessing

    media(tmp_path, "a.mp4")
    manifest = write(tmp_path / "m.csv", "video,caption\na.mp4,x\ngone.mp4,y\n")
    run = load_config(RetrievalConfig, None, ["data.corpus=manifest", f"data.manifest.path={manifest}",
                                              f"train.output_dir={tmp_path / 'run'}"])
    options = SampleOptions(inputs=Preprocessing(max_frames=2, max_segments=2))
    with pytest.raises(FileNotFoundError, match="1 of 2 media files"):
        split_datasets(run, "retrieval", options, options.evaluation())
    assert (tmp_path / "run" / "manifest_missing_media.txt").read_text().startswith(str(tmp_path / "gone.mp4"))


def test_tools_that_visit_every_split_skip_a_split_the_manifest_lacks(tmp_path):
    from clip4vla.data.readers.manifest import EmptySplitError

    media(tmp_path, "a.mp4", "b.mp4")
    data = config(write(tmp_path / "m.csv", "video,caption,split\na.mp4,x,train\nb.mp4,y,test\n")).data
    with pytest.raises(EmptySplitError):  # what pairing and evaluation_dataset skip; an AnnotationError is not one
        read_split(data, "manifest", "val", "retrieval")
    assert not issubclass(AnnotationError, EmptySplitError)


def test_the_start_up_shortcuts_equal_the_records(tmp_path):
    media(tmp_path, "a.mp4", "b.mp4")
    text = "video,caption,start,end\na.mp4,one,0,2.5\nb.mp4,two,,\na.mp4,three,2.5,5\nb.mp4,four,,\na.mp4,five,0,2.5\n"
    table = read_manifest(write(tmp_path / "m.csv", text), split_fractions=(1, 0, 0))
    for unfold in (False, True):
        records = table.records("train", unfold)
        assert records.video_ids() == [r.video_id for r in records]
        assert records.all_captions() == [c for r in records for c in r.captions]
    assert table.records("train", False).video_ids() == ["a@0-2.5", "b", "a@2.5-5"]


def test_a_jsonl_row_without_its_video_names_the_keys_it_has(tmp_path):
    err = error_of(tmp_path, '{"video": "a.mp4", "caption": "x"}\n{"file": "b.mp4", "caption": "y"}\n', name="m.jsonl")
    assert (err.line, err.field) == (2, "video") and "this row has ['caption', 'file']" in str(err)


# ----------------------------------------------------------------------------------------------
# rows without a caption: media-only clips for pre-training, an error for the text tasks
# ----------------------------------------------------------------------------------------------
MIXED = "video,caption,split,label\na.mp4,a dog barks,train,dog\nb.mp4,,train,cat\nc.wav,,train,rain\nd.mp4,x,val,dog\n"


@pytest.mark.parametrize("name, text, line, media_only", [
    ("m.csv", MIXED, 3, ["b", "c"]),
    ("m.csv", "video,split\na.mp4,train\nb.mp4,train\n", 2, ["a", "b"]),  # no caption column at all
    ("m.jsonl", '{"video": "a.mp4", "caption": "x", "split": "train"}\n{"video": "b.mp4", "caption": [], '
                '"split": "train"}\n', 2, ["b"]),
])
def test_rows_without_a_caption_pretrain_but_text_tasks_name_their_line(tmp_path, name, text, line, media_only):
    media(tmp_path, "a.mp4", "b.mp4", "c.wav", "d.mp4")
    data = config(write(tmp_path / name, text)).data
    records = read_split(data, "manifest", "train", "pretrain", unfold_captions=True)
    assert sorted(r.video_id for r in records if not any(r.captions)) == media_only
    for purpose in ("retrieval", "caption"):
        with pytest.raises(AnnotationError) as info:
            read_split(data, "manifest", "train", purpose)
        assert (info.value.line, info.value.field) == (line, "caption") and str(tmp_path / name) in str(info.value)
        assert "empty caption" in str(info.value)
    if name == "m.csv" and "label" in text:  # the probes read the label, not the caption
        assert len(read_split(data, "manifest", "train", "classification")) == 3
        assert len(read_split(data, "manifest", "val", "retrieval")) == 1  # the captioned split still reads


def test_media_only_rows_take_no_part_in_the_text_losses():
    """Text-audio / text-video / text-text run over captioned rows only; video-audio and
    intra-modal over every usable row; a captioned batch's losses are bitwise unchanged."""
    import torch

    from clip4vla.losses import PretrainLoss

    g = torch.Generator().manual_seed(0)
    t, v, a, m = (torch.randn(6, 8, generator=g) for _ in range(4))
    t[3:] = float("nan")  # media-only rows: whatever their text features hold never reaches the loss
    valid = torch.ones(6, dtype=torch.bool)
    loss = PretrainLoss(ref_extras=True)
    captioned = torch.tensor([True, True, True, False, False, False])
    total, parts = loss(t, v, a, m, valid=valid, has_text=captioned)
    _, subset = loss(t[:3], v[:3], a[:3], m[:3])
    for key in ("ta", "tv", "tt"):
        assert torch.allclose(parts[key], subset[key]), key
    _, everything = loss(t.nan_to_num(), v, a, m, valid=valid)
    assert torch.equal(parts["va"], everything["va"]) and torch.equal(parts["aa"], everything["aa"])
    assert torch.isfinite(total)
    _, media_only = loss(t, v, a, m, valid=valid, has_text=torch.zeros(6, dtype=torch.bool))
    assert media_only["ta"] == 0 and media_only["tv"] == 0 and media_only["va"] > 0
    t = torch.randn(6, 8, generator=g)
    before = loss(t, v, a, m, valid=valid)
    after = loss(t, v, a, m, valid=valid, has_text=valid.clone())
    assert torch.equal(before[0], after[0]) and all(torch.equal(before[1][k], after[1][k]) for k in before[1])


def test_a_pretraining_manifest_with_caption_less_rows_trains(synthetic_root, tmp_path):
    """A tiny pre-train on a manifest where every other row has no caption."""
    from clip4vla.data.synthetic_formats import write_corpus_format

    manifest = write_corpus_format(synthetic_root, "manifest", tmp_path / "mine") / "manifest.csv"
    with manifest.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    clips = list(dict.fromkeys((r["video"], r["start"], r["end"]) for r in rows))
    bare = set(clips[1::2])  # every other clip: one row, no caption (two would be a duplicated row)
    rows = [r for r in rows if (r["video"], r["start"], r["end"]) not in bare] + \
        [{**next(r for r in rows if (r["video"], r["start"], r["end"]) == c), "caption": ""} for c in clips[1::2]]
    with manifest.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    settings = {"model.arch": "micro", "model.train_clip": True, "audio.max_segments": 2, "data.corpus": "manifest",
                "data.manifest.path": manifest, "data.max_frames": 2, "data.num_workers": 0, "train.epochs": 1,
                "train.batch_size": 4, "train.log_every": 1, "train.checkpoint_every_steps": 0,
                "train.output_dir": out}
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "scripts" / "pretrain.py"),
                           *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    assert steps and all(math.isfinite(r[k]) for r in steps for k in ("loss", "ta", "va", "aa"))
    assert any(r["ta"] == 0 and r["va"] > 0 for r in steps)  # a batch of media-only clips: video-audio only
    assert any(r["ta"] > 0 for r in steps)
