"""Annotation readers on small files written here in each corpus's real format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from clip4vla.data.readers import (
    READERS,
    read_audiocaps,
    read_audioset,
    read_esc50,
    read_howto100m,
    read_msrvtt,
    read_ucf101,
    read_vatex,
)
from clip4vla.data.readers.howto100m import extend_spans
from clip4vla.data.records import AnnotationError, ClipRecord, MediaLayout, check_media, missing_media_reason


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def expect_error(match_parts: list[str], fn, *args, **kwargs) -> AnnotationError:
    with pytest.raises(AnnotationError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))  # survives worker processes intact
    assert str(copy) == message and (copy.line, copy.field) == (info.value.line, info.value.field)
    for part in match_parts:
        assert part in message, f"{part!r} not in {message!r}"
    return info.value


# ---------------------------------------------------------------- records / media -----------


def test_clip_record_normalises_and_validates(tmp_path):
    r = ClipRecord(
        "v", video_path=str(tmp_path / "v.mp4"), captions=["a", "b"], audio_type="nb", start=1, end=2
    )
    assert r.captions == ("a", "b") and isinstance(r.video_path, Path) and r.start == 1.0
    with pytest.raises(Exception):
        r.video_id = "w"  # frozen
    with pytest.raises(ValueError, match="audio_type"):
        ClipRecord("v", captions=("a",), audio_type="speech")
    with pytest.raises(ValueError, match="before start"):
        ClipRecord("v", captions=("a",), start=5, end=2)
    with pytest.raises(TypeError):
        ClipRecord("v", captions="one string")


def test_media_layout_prefers_listed_extension_and_names_missing(tmp_path):
    videos = tmp_path / "videos"
    touch(videos / "a.webm")
    touch(videos / "a.mp4")
    touch(videos / "b.mkv")
    touch(videos / "c.txt")
    layout = MediaLayout(video_dir=videos, prepared_dir=tmp_path / "prepared")
    assert layout.video_path("a") == videos / "a.mp4"
    assert layout.video_path("b") == videos / "b.mkv"
    assert layout.video_path("c") == videos / "c.mp4"  # not a video: expected path, missing
    media = layout.resolve("a")
    assert media["frames_dir"] == tmp_path / "prepared" / "frames" / "a"
    assert media["audio_path"] == tmp_path / "prepared" / "audio" / "a.wav"


def test_check_media_reports_missing(tmp_path):
    touch(tmp_path / "v1.mp4")
    (tmp_path / "frames" / "v2").mkdir(parents=True)
    touch(tmp_path / "a3.wav")
    records = [
        ClipRecord("v1", video_path=tmp_path / "v1.mp4", captions=("x",)),
        # prepared frames present, raw video absent: either route is enough for vision
        ClipRecord(
            "v2", video_path=tmp_path / "v2.mp4", frames_dir=tmp_path / "frames" / "v2", captions=("x",)
        ),
        ClipRecord("a3", audio_path=tmp_path / "a3.wav", captions=("x",)),
        ClipRecord("v4", video_path=tmp_path / "v4.mp4", captions=("x",)),
        ClipRecord("a5", audio_path=tmp_path / "a5.wav", captions=("x",)),
        ClipRecord("v6", video_path=tmp_path / "v1.mp4", audio_path=tmp_path / "v6.wav", captions=("x",)),
    ]
    present, missing = check_media(records)
    assert [r.video_id for r in present] == ["v1", "v2", "a3"]
    assert [r.video_id for r in missing] == ["v4", "a5", "v6"]
    assert "v4.mp4" in missing_media_reason(records[3])
    assert "a5.wav" in missing_media_reason(records[4])
    # silent clips may lack a prepared wav: only vision is then required
    present, missing = check_media(records, require_audio=False)
    assert [r.video_id for r in missing] == ["v4", "a5"]


def test_registry_lists_every_corpus():
    assert set(READERS) == {"msrvtt", "vatex", "audiocaps", "howto100m", "audioset", "esc50", "ucf101"}
    assert READERS["msrvtt"] is read_msrvtt and READERS["howto100m"] is read_howto100m


# ---------------------------------------------------------------- MSR-VTT --------------------


def msrvtt_files(root: Path, *, data: dict | None = None) -> Path:
    if data is None:
        data = {
            "info": {"year": 2016},
            "videos": [
                {
                    "video_id": "video0",
                    "split": "train",
                    "category": 9,
                    "start time": 1.0,
                    "end time": 11.0,
                    "id": 0,
                },
                {"video_id": "video1", "split": "validate", "id": 1},
                {"video_id": "video2", "split": "test", "id": 2, "audio_type": "nb"},
                {"video_id": "video3", "split": "train", "id": 3},
            ],
            "sentences": [
                {"caption": "a dog runs", "video_id": "video0", "sen_id": 0},
                {"caption": "a man sings", "video_id": "video1", "sen_id": 1},
                {"caption": "a puppy is running", "video_id": "video0", "sen_id": 2},
                {"caption": " cars race ", "video_id": "video2", "sen_id": 3},
                {"caption": "someone sings a song", "video_id": "video1", "sen_id": 4},
                {"caption": "a dog in a park", "video_id": "video0", "sen_id": 5},
                {"caption": "a race on a track", "video_id": "video2", "sen_id": 6},
                {"caption": "cooking pasta", "video_id": "video3", "sen_id": 7},
            ],
        }
    write(root / "MSRVTT_data.json", json.dumps(data))
    write(root / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo2\nvideo3\n")
    # the real file carries a leading unnamed pandas index column
    write(
        root / "MSRVTT_JSFUSION_test.csv",
        ",key,vid_key,video_id,sentence\n0,ret0,msr1,video1,a man sings on stage\n",
    )
    return root


def test_msrvtt_retrieval_train_unfolds_captions_and_resolves_media(tmp_path):
    root = msrvtt_files(tmp_path / "ann")
    videos = tmp_path / "videos"
    touch(videos / "video0.mp4")
    touch(videos / "video2.webm")
    records = read_msrvtt(root, "train", video_dir=videos)
    assert [(r.video_id, r.captions) for r in records] == [
        ("video0", ("a dog runs",)),
        ("video0", ("a puppy is running",)),
        ("video0", ("a dog in a park",)),
        ("video2", ("cars race",)),
        ("video2", ("a race on a track",)),
        ("video3", ("cooking pasta",)),
    ]
    assert [r.audio_type for r in records] == ["vb", "vb", "vb", "nb", "nb", "vb"]
    assert records[3].video_path == videos / "video2.webm"
    assert all(r.source == "msrvtt" and r.start is None and r.end is None for r in records)
    present, missing = check_media(records)
    assert {r.video_id for r in missing} == {"video3"} and len(present) == 5

    grouped = read_msrvtt(root, "train", unfold_captions=False)
    assert [len(r.captions) for r in grouped] == [3, 2, 1]
    assert grouped[0].video_path is None


def test_msrvtt_retrieval_test_is_1ka_csv(tmp_path):
    root = msrvtt_files(tmp_path)
    records = read_msrvtt(root, "test", prepared_dir=tmp_path / "prepared")
    assert len(records) == 1
    r = records[0]
    assert r.video_id == "video1" and r.captions == ("a man sings on stage",) and r.audio_type == "vb"
    assert r.frames_dir == tmp_path / "prepared" / "frames" / "video1"
    assert r.audio_path == tmp_path / "prepared" / "audio" / "video1.wav"
    write(root / "MSRVTT_val.csv", "key,vid_key,video_id,sentence\nret0,msr3,video3,cooking pasta in a pot\n")
    val = read_msrvtt(root, "val", val_source="csv")
    assert [(r.video_id, r.captions) for r in val] == [("video3", ("cooking pasta in a pot",))]
    # by default validation holds out the official "validate" videos (first caption each)
    val = read_msrvtt(root, "val")
    assert [(r.video_id, r.captions) for r in val] == [("video1", ("a man sings",))]
    # without the data json the csv alone is enough
    (root / "MSRVTT_data.json").unlink()
    assert read_msrvtt(root, "test")[0].captions == ("a man sings on stage",)


def test_msrvtt_captioning_uses_official_split(tmp_path):
    root = msrvtt_files(tmp_path)
    train = read_msrvtt(root, "train", task="captioning")
    assert [r.video_id for r in train] == ["video0"] * 3 + ["video3"]
    val = read_msrvtt(root, "val", task="captioning")
    assert [(r.video_id, r.captions) for r in val] == [("video1", ("a man sings", "someone sings a song"))]
    test = read_msrvtt(root, "test", task="captioning")
    assert [(r.video_id, len(r.captions), r.audio_type) for r in test] == [("video2", 2, "nb")]
    with pytest.raises(ValueError, match="split"):
        read_msrvtt(root, "dev", task="captioning")


def test_msrvtt_malformed(tmp_path):
    base = json.loads(json.dumps(json.load(open(msrvtt_files(tmp_path / "ok") / "MSRVTT_data.json"))))

    bad = json.loads(json.dumps(base))
    bad["videos"][1]["split"] = "trian"
    root = msrvtt_files(tmp_path / "split", data=bad)
    expect_error(["MSRVTT_data.json", "videos[1]", "'split'", "trian"], read_msrvtt, root, "train")

    bad = json.loads(json.dumps(base))
    bad["sentences"][4]["caption"] = "   "
    root = msrvtt_files(tmp_path / "empty", data=bad)
    expect_error(
        ["MSRVTT_data.json", "sentences[4]", "'caption'", "empty caption"], read_msrvtt, root, "train"
    )

    bad = json.loads(json.dumps(base))
    bad["videos"][0]["audio_type"] = "speech"
    root = msrvtt_files(tmp_path / "atype", data=bad)
    expect_error(["videos[0]", "'audio_type'"], read_msrvtt, root, "train")

    bad = json.loads(json.dumps(base))
    bad["videos"].append({"video_id": "video0", "split": "train"})
    root = msrvtt_files(tmp_path / "dup", data=bad)
    expect_error(["videos[4]", "duplicate"], read_msrvtt, root, "train")

    root = msrvtt_files(tmp_path / "trunc")
    text = json.dumps(base, indent=1)
    write(root / "MSRVTT_data.json", text[: len(text) // 2])
    err = expect_error(["MSRVTT_data.json", "invalid JSON"], read_msrvtt, root, "train")
    assert err.line is not None and err.line > 1

    root = msrvtt_files(tmp_path / "col")
    write(root / "MSRVTT_train.9k.csv", "vid\nvideo0\n")
    expect_error(
        ["MSRVTT_train.9k.csv", "line 1", "'video_id'", "missing column"], read_msrvtt, root, "train"
    )

    root = msrvtt_files(tmp_path / "unknown")
    write(root / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo9\n")
    expect_error(["MSRVTT_train.9k.csv", "line 3", "'video_id'", "video9"], read_msrvtt, root, "train")

    root = msrvtt_files(tmp_path / "dup1ka")
    write(
        root / "MSRVTT_JSFUSION_test.csv",
        ",key,vid_key,video_id,sentence\n0,ret0,msr1,video1,a\n1,ret1,msr1,video1,b\n",
    )
    expect_error(["MSRVTT_JSFUSION_test.csv", "line 3", "duplicate"], read_msrvtt, root, "test")

    root = msrvtt_files(tmp_path / "short")
    write(root / "MSRVTT_JSFUSION_test.csv", ",key,vid_key,video_id,sentence\n0,ret0,msr1,video1\n")
    expect_error(["line 2", "'sentence'", "expected 5 fields"], read_msrvtt, root, "test")


# ---------------------------------------------------------------- VATEX ----------------------


def vatex_entry(video_id: str, n: int = 10, tag: str = "") -> dict:
    return {"videoID": video_id, "enCap": [f"{tag} caption {i}" for i in range(n)], "chCap": ["x"] * n}


def vatex_files(root: Path) -> Path:
    write(
        root / "vatex_training_v1.0.json",
        json.dumps(
            [vatex_entry("Ab_c-d_000012_000022", tag="t0"), vatex_entry("xyz_000000_000010", tag="t1")]
        ),
    )
    write(root / "vatex_validation_v1.0.json", json.dumps([vatex_entry("val1_000030_000040", tag="v")]))
    write(
        root / "vatex_public_test_english_v1.1.json", json.dumps([vatex_entry("tst_000005_000015", tag="p")])
    )
    return root


def test_vatex_splits_windows_and_captions(tmp_path):
    root = vatex_files(tmp_path / "ann")
    train = read_vatex(root, "train")
    assert len(train) == 20 and all(len(r.captions) == 1 for r in train)
    assert train[0].captions == ("t0 caption 0",) and train[10].video_id == "xyz_000000_000010"
    assert all(r.start is None and r.end is None and r.audio_type == "vb" for r in train)

    val = read_vatex(root, "val", video_dir=tmp_path / "videos")
    assert len(val) == 1 and len(val[0].captions) == 10
    assert val[0].video_path == tmp_path / "videos" / "val1_000030_000040.mp4"

    full = read_vatex(root, "train", media="full", unfold_captions=False, video_dir=tmp_path / "yt")
    assert (full[0].video_id, full[0].start, full[0].end) == ("Ab_c-d_000012_000022", 12.0, 22.0)
    assert full[0].video_path == tmp_path / "yt" / "Ab_c-d.mp4"  # ytids may contain '_' and '-'


def test_vatex_split_csv_looks_up_all_jsons(tmp_path):
    root = vatex_files(tmp_path)
    csv = write(tmp_path / "test_list.csv", "video_id\ntst_000005_000015\nval1_000030_000040\n")
    records = read_vatex(root, "test", split_csv=csv)
    assert [(r.video_id, len(r.captions)) for r in records] == [
        ("tst_000005_000015", 10),
        ("val1_000030_000040", 10),
    ]
    write(csv, "video_id\ntst_000005_000015\nnope_000001_000002\n")
    expect_error(["test_list.csv", "line 3", "'video_id'"], read_vatex, root, "test", split_csv=csv)


def test_vatex_malformed(tmp_path):
    root = vatex_files(tmp_path)
    write(
        root / "vatex_validation_v1.0.json",
        json.dumps([vatex_entry("val1_000030_000040"), vatex_entry("badid_12_x")]),
    )
    expect_error(["vatex_validation_v1.0.json", "[1]", "'videoID'"], read_vatex, root, "val")
    entry = vatex_entry("val1_000030_000040")
    entry["enCap"][3] = ""
    write(root / "vatex_validation_v1.0.json", json.dumps([entry]))
    expect_error(["[0].enCap[3]", "'enCap'", "empty caption"], read_vatex, root, "val")
    write(root / "vatex_validation_v1.0.json", json.dumps([{"videoID": "val1_000030_000040"}]))
    expect_error(["[0]", "'enCap'", "missing"], read_vatex, root, "val")


# ---------------------------------------------------------------- AudioCaps ------------------


AUDIOCAPS_TEST = """audiocap_id,youtube_id,start_time,caption
1,yt_A,30,A dog barks
2,yt_B,0,"Rain falls, thunder rumbles"
3,yt_A,30,A dog is barking loudly
4,yt_A,30,Barking
5,yt_B,0,Heavy rain
6,yt_A,30,A canine barks twice
7,yt_B,0,Storm noise
8,yt_B,0,Water splashes
9,yt_A,30,Dog barking outside
10,yt_B,0,Thunder and rain
"""


def test_audiocaps_groups_five_captions_per_test_clip(tmp_path):
    write(tmp_path / "test.csv", AUDIOCAPS_TEST)
    touch(tmp_path / "audio" / "yt_A.wav")
    records = read_audiocaps(tmp_path, "test", audio_dir=tmp_path / "audio")
    assert [r.video_id for r in records] == ["yt_A", "yt_B"]
    assert records[0].captions == (
        "A dog barks",
        "A dog is barking loudly",
        "Barking",
        "A canine barks twice",
        "Dog barking outside",
    )
    assert records[1].captions[0] == "Rain falls, thunder rumbles"
    assert all(len(r.captions) == 5 and r.audio_type == "nb" and r.video_path is None for r in records)
    assert records[0].audio_path == tmp_path / "audio" / "yt_A.wav" and records[0].start is None
    present, missing = check_media(records)
    assert [r.video_id for r in missing] == ["yt_B"]

    full = read_audiocaps(tmp_path, "test", media="full", video_dir=tmp_path / "v")
    assert [(r.start, r.end) for r in full] == [(30.0, 40.0), (0.0, 10.0)]
    assert full[0].video_path == tmp_path / "v" / "yt_A.mp4" and full[0].audio_path is None


def test_audiocaps_train_unfolds(tmp_path):
    write(tmp_path / "train.csv", "audiocap_id,youtube_id,start_time,caption\n7,a,0,x y\n8,b,10,z\n9,a,0,w\n")
    records = read_audiocaps(tmp_path, "train")
    assert [(r.video_id, r.captions) for r in records] == [("a", ("x y",)), ("a", ("w",)), ("b", ("z",))]


def test_audiocaps_malformed(tmp_path):
    write(tmp_path / "val.csv", "audiocap_id,youtube_id,start_time,caption\n1,a,0,ok\n2,b,ten,bad\n")
    expect_error(["val.csv", "line 3", "'start_time'", "not a number"], read_audiocaps, tmp_path, "val")
    write(tmp_path / "val.csv", "audiocap_id,youtube_id,caption\n1,a,ok\n")
    expect_error(["val.csv", "line 1", "'start_time'", "missing column"], read_audiocaps, tmp_path, "val")
    write(tmp_path / "val.csv", "audiocap_id,youtube_id,start_time,caption\n1,a,0,ok\n2,a,0, \n")
    expect_error(["line 3", "'caption'", "empty caption"], read_audiocaps, tmp_path, "val")
    write(tmp_path / "val.csv", "audiocap_id,youtube_id,start_time,caption\n1,a,0,ok\n2,a,20,other\n")
    expect_error(["line 3", "'start_time'", "line 2"], read_audiocaps, tmp_path, "val")
    write(tmp_path / "val.csv", "audiocap_id,youtube_id,start_time,caption\n1,a,0,ok\n1,b,0,other\n")
    expect_error(["line 3", "'audiocap_id'", "duplicate"], read_audiocaps, tmp_path, "val")


# ---------------------------------------------------------------- HowTo100M ------------------


HOWTO = {
    "v1": {
        "start": [0.0, 2.0, 5.0, 15.0, 16.0],
        "end": [2.0, 5.0, 15.0, 16.0, 30.0],
        "text": [
            "hello there",
            "we are going to cook",
            "today a nice soup with carrots",
            "ok",
            "then add salt and pepper to taste",
        ],
    },
    "v2": {"start": [1.0], "end": [4.0], "text": ["just a test"]},
    "v3": {"start": [0.0, 12.0], "end": [12.0, 20.0], "text": ["", "five words are right here"]},
}


def test_howto100m_windows_follow_the_growth_rule(tmp_path):
    path = write(tmp_path / "caption.json", json.dumps(HOWTO))
    records = read_howto100m(path, video_dir=tmp_path / "videos")
    got = [(r.video_id, r.start, r.end, r.captions[0]) for r in records]
    soup = "hello there we are going to cook today a nice soup with carrots"
    assert got == [
        ("v1", 0.0, 15.0, soup),  # grows forward only (video start)
        ("v1", 0.0, 15.0, soup),  # previous gives the shorter window (5 s < 13 s), then next
        ("v1", 5.0, 15.0, "today a nice soup with carrots"),  # already 10 s and 6 words
        ("v1", 5.0, 16.0, "today a nice soup with carrots ok"),  # previous: 11 s < 15 s
        ("v1", 16.0, 30.0, "then add salt and pepper to taste"),
        ("v2", 1.0, 4.0, "just a test"),  # whole video is shorter than the minimum: kept as is
        ("v3", 0.0, 20.0, "five words are right here"),
        ("v3", 0.0, 20.0, "five words are right here"),
    ]
    assert all(r.audio_type == "vb" and r.source == "howto100m" for r in records)
    assert records[0].video_path == tmp_path / "videos" / "v1.mp4"

    # the original pickle (numpy arrays) gives the same records
    pkl = tmp_path / "caption.pickle"
    with open(pkl, "wb") as f:
        pickle.dump({k: {f: np.asarray(v) for f, v in d.items()} for k, d in HOWTO.items()}, f)
    assert list(read_howto100m(pkl, video_dir=tmp_path / "videos")) == list(records)

    only = read_howto100m(path, video_ids=["v2"])
    assert [r.video_id for r in only] == ["v2"]
    with pytest.raises(ValueError, match="not in"):
        read_howto100m(path, video_ids=["v9"])


def test_a_span_table_and_a_list_concatenated_index_like_one_list(tmp_path):
    from clip4vla.data.span_table import concat_records

    table = read_howto100m(write(tmp_path / "caption.json", json.dumps(HOWTO)), video_dir=tmp_path / "videos")
    extra = [ClipRecord(video_id="a1", captions=("x",)), ClipRecord(video_id="a2", captions=("y",))]
    both = concat_records([table, extra])
    whole = list(table) + extra
    assert len(both) == len(whole) == 10 and list(both) == whole
    assert both[-1] == whole[-1] and both[-3] == whole[-3] and both[6:9] == whole[6:9] and both[::4] == whole[::4]
    with pytest.raises(IndexError, match="record 10 out of range for 10 records"):
        both[10]
    with pytest.raises(IndexError, match="window -9 out of range for 8 windows"):
        table[-9]


def test_howto100m_span_index_is_the_same_records_memory_mapped(tmp_path, monkeypatch):
    from clip4vla.data.readers.howto100m import build_howto100m_index
    from clip4vla.data.span_table import SpanTable

    path = write(tmp_path / "caption.json", json.dumps(HOWTO))
    direct = read_howto100m(path, video_dir=tmp_path / "videos")
    stats = build_howto100m_index(path, tmp_path / "spans", progress=False)  # caption.json streamed
    assert stats["videos"] == 3 and stats["windows"] == len(direct) == 8
    mapped = read_howto100m(tmp_path / "spans", video_dir=tmp_path / "videos")
    assert isinstance(mapped, SpanTable) and isinstance(mapped.arrays["video"], np.memmap)
    assert list(mapped) == list(direct) and mapped[-1] == direct[7] and mapped[2:4] == list(direct)[2:4]
    # per window: 4 + 2 x 4 + 2 x 4 bytes, the texts once (not once per window that uses them)
    fixed = sum(mapped.arrays[k].nbytes for k in ("video", "start", "end", "text_lo", "text_hi"))
    assert fixed == 20 * len(mapped)
    assert mapped.arrays["text_bytes"].nbytes == sum(len(t.encode()) for d in HOWTO.values() for t in d["text"])
    assert [r.video_id for r in read_howto100m(tmp_path / "spans", video_ids=["v3", "v1"])] == ["v3"] * 2 + ["v1"] * 5
    # built a few videos at a time (as for the whole corpus): the same table
    from clip4vla.data.readers import howto100m as howto_mod

    monkeypatch.setattr(howto_mod, "INDEX_CHUNK_LINES", 2)
    build_howto100m_index(path, tmp_path / "chunked", progress=False)
    chunked = read_howto100m(tmp_path / "chunked", video_dir=tmp_path / "videos")
    assert list(chunked) == list(direct)
    for name in mapped.arrays:
        assert np.array_equal(chunked.arrays[name], mapped.arrays[name]), name
    assert [r.video_id for r in mapped.video_records()] == ["v1", "v2", "v3"]  # one per video for media checks
    with pytest.raises(ValueError, match="min_seconds=10.0"):
        read_howto100m(tmp_path / "spans", min_seconds=5.0)
    with pytest.raises(ValueError, match="not in"):
        read_howto100m(tmp_path / "spans", video_ids=["v9"])
    write(tmp_path / "broken.json", json.dumps(HOWTO)[:-20])
    with pytest.raises(AnnotationError, match="invalid JSON"):
        build_howto100m_index(tmp_path / "broken.json", tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()
    with pytest.raises(FileNotFoundError, match="not a HowTo100M span index"):
        read_howto100m(tmp_path)  # a folder, but no index in it


def _reference_window(starts, ends, words, i, min_seconds, min_words):
    """The growth rule written as the plain per-span loop the module docstring describes."""
    lo = hi = i
    n = len(starts)
    while sum(words[lo : hi + 1]) < min_words or ends[hi] - starts[lo] < min_seconds:
        if lo > 0 and hi < n - 1:
            if ends[hi] - starts[lo - 1] <= ends[hi + 1] - starts[lo]:
                lo -= 1
            else:
                hi += 1
        elif lo > 0:
            lo -= 1
        elif hi < n - 1:
            hi += 1
        else:
            break
    return lo, hi


def test_extend_spans_matches_the_per_span_rule_on_random_transcripts():
    rng = np.random.default_rng(0)
    starts, ends, words, first, last = [], [], [], [], []
    offset = 0
    for _ in range(40):
        n = int(rng.integers(1, 30))
        # whole seconds so that ties between the two neighbours (rule: previous wins) occur often
        durations = np.round(rng.exponential(3.0, n))
        gaps = rng.choice([0.0, 1.0, -1.0], n)  # touching, gapped and overlapping spans
        s = np.maximum(np.cumsum(durations + gaps) - durations, 0)
        starts.append(s)
        ends.append(s + durations)
        words.append(rng.integers(0, 5, n))
        first.append(np.full(n, offset))
        last.append(np.full(n, offset + n - 1))
        offset += n
    starts, ends, words = map(np.concatenate, (starts, ends, words))
    first, last = np.concatenate(first), np.concatenate(last)
    for min_seconds, min_words in [(10.0, 5), (4.0, 0), (0.0, 8)]:
        lo, hi = extend_spans(starts, ends, words, first, last, min_seconds, min_words)
        for i in range(len(starts)):
            f, l_ = first[i], last[i] + 1
            ref = _reference_window(starts[f:l_], ends[f:l_], words[f:l_], i - f, min_seconds, min_words)
            assert (lo[i] - f, hi[i] - f) == ref, i


def test_howto100m_malformed(tmp_path):
    bad = json.loads(json.dumps(HOWTO))
    bad["v2"]["start"] = [1.0, 2.0]
    path = write(tmp_path / "caption.json", json.dumps(bad))
    expect_error(["caption.json", "['v2']", "lengths differ"], read_howto100m, path)
    bad = json.loads(json.dumps(HOWTO))
    bad["v1"]["end"][3] = "soon"
    write(path, json.dumps(bad))
    expect_error(["caption.json", "['v1'].end[3]", "'end'", "not a number"], read_howto100m, path)
    bad = json.loads(json.dumps(HOWTO))
    bad["v1"]["end"][2] = 4.0
    write(path, json.dumps(bad))
    expect_error(["['v1'].end[2]", "before start"], read_howto100m, path)
    bad = json.loads(json.dumps(HOWTO))
    del bad["v3"]["text"]
    write(path, json.dumps(bad))
    expect_error(["['v3']", "'text'", "missing"], read_howto100m, path)
    bad = json.loads(json.dumps(HOWTO))
    bad["v2"]["text"] = ["  "]
    write(path, json.dumps(bad))
    expect_error(["['v2']", "empty caption"], read_howto100m, path)
    bad = json.loads(json.dumps(HOWTO))
    bad["v2"]["text"] = "just a test"
    write(path, json.dumps(bad))
    expect_error(["['v2']", "'text'", "list"], read_howto100m, path)
    write(path, json.dumps(HOWTO)[:-20])
    expect_error(["caption.json", "line 1", "invalid JSON"], read_howto100m, path)


# ---------------------------------------------------------------- AudioSet -------------------


AUDIOSET_CSV = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=6
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0SdAVK79lg, 0.000, 10.000, "/m/04rlf"
a_b-c, 12.500, 22.500, "/m/04rlf,/m/0bt9lr,/m/09x0r"
"""

ONTOLOGY = [
    {"id": "/m/09x0r", "name": "Speech", "description": "", "child_ids": []},
    {"id": "/t/dd00088", "name": "Gush", "description": "", "child_ids": []},
    {"id": "/m/04rlf", "name": "Music", "description": "", "child_ids": []},
    {"id": "/m/0bt9lr", "name": "Dog", "description": "", "child_ids": []},
]


def test_audioset_captions_ids_and_windows(tmp_path):
    csv = write(tmp_path / "balanced_train_segments.csv", AUDIOSET_CSV)
    onto = write(tmp_path / "ontology.json", json.dumps(ONTOLOGY))
    records = read_audioset(csv, onto, audio_dir=tmp_path / "audio")
    assert [r.video_id for r in records] == ["--PJHxphWEs_30", "-0SdAVK79lg_0", "a_b-c_12.5"]
    assert [r.captions for r in records] == [
        ("the sound of Speech and Gush",),
        ("the sound of Music",),
        ("the sound of Music, Dog and Speech",),
    ]
    assert all(r.audio_type == "nb" and r.label is None and r.start is None for r in records)
    assert (
        records[0].audio_path == tmp_path / "audio" / "--PJHxphWEs_30.wav" and records[0].video_path is None
    )

    full = read_audioset(csv, onto, media="full", video_dir=tmp_path / "v")
    assert [(r.start, r.end) for r in full] == [(30.0, 40.0), (0.0, 10.0), (12.5, 22.5)]
    assert full[0].video_path == tmp_path / "v" / "--PJHxphWEs.mp4"
    named = read_audioset(csv, onto, name_format="Y{ytid}")
    assert named[1].video_id == "Y-0SdAVK79lg"


def test_audioset_malformed(tmp_path):
    onto = write(tmp_path / "ontology.json", json.dumps(ONTOLOGY))
    csv = tmp_path / "segments.csv"
    write(csv, AUDIOSET_CSV.replace("/m/0bt9lr", "/m/zzz"))
    expect_error(["segments.csv", "line 6", "'positive_labels'", "/m/zzz"], read_audioset, csv, onto)
    write(csv, AUDIOSET_CSV.replace("0.000, 10.000", "0.000, ten"))
    expect_error(["segments.csv", "line 5", "'end_seconds'"], read_audioset, csv, onto)
    write(csv, AUDIOSET_CSV.replace('"/m/04rlf"\n', '""\n'))
    expect_error(["line 5", "'positive_labels'"], read_audioset, csv, onto)
    write(
        csv,
        AUDIOSET_CSV.replace(
            "# YTID, start_seconds, end_seconds, positive_labels", "# YTID, start, end, labels"
        ),
    )
    expect_error(["line 3", "'start_seconds'", "missing column"], read_audioset, csv, onto)
    write(csv, AUDIOSET_CSV)
    write(onto, json.dumps(ONTOLOGY)[:40])
    expect_error(["ontology.json", "invalid JSON"], read_audioset, csv, onto)


# ---------------------------------------------------------------- ESC-50 ---------------------


ESC50_CSV = """filename,fold,target,category,esc10,src_file,take
1-100032-A-0.wav,1,0,dog,True,100032,A
1-100038-A-14.wav,1,14,chirping_birds,False,100038,A
2-102414-B-12.wav,2,12,crackling_fire,True,102414,B
5-9032-A-0.wav,5,0,dog,True,9032,A
"""


def test_esc50_folds_labels_and_audio_only_media(tmp_path):
    write(tmp_path / "meta" / "esc50.csv", ESC50_CSV)
    touch(tmp_path / "audio" / "1-100032-A-0.wav")
    records = read_esc50(tmp_path, folds=[1, 2])
    assert [(r.video_id, r.label, r.captions) for r in records] == [
        ("1-100032-A-0", 0, ("dog",)),
        ("1-100038-A-14", 14, ("chirping birds",)),
        ("2-102414-B-12", 12, ("crackling fire",)),
    ]
    assert all(r.video_path is None and r.audio_type == "nb" and r.source == "esc50" for r in records)
    assert records[0].audio_path == tmp_path / "audio" / "1-100032-A-0.wav"
    present, missing = check_media(records)
    assert [r.video_id for r in present] == ["1-100032-A-0"] and len(missing) == 2
    assert len(read_esc50(tmp_path)) == 4
    prepared = read_esc50(tmp_path, folds=[5], prepared_dir=tmp_path / "prep")
    assert prepared[0].audio_path == tmp_path / "prep" / "audio" / "5-9032-A-0.wav"
    with pytest.raises(ValueError, match="folds"):
        read_esc50(tmp_path, folds=[6])


def test_esc50_malformed(tmp_path):
    path = tmp_path / "meta" / "esc50.csv"
    write(path, ESC50_CSV.replace("5-9032-A-0.wav,5,0,dog", "5-9032-A-0.wav,5,0,cat"))
    expect_error(["esc50.csv", "line 5", "'category'", "line 2"], read_esc50, tmp_path)
    write(path, ESC50_CSV.replace("2-102414-B-12.wav,2,", "2-102414-B-12.wav,two,"))
    expect_error(["esc50.csv", "line 4", "'fold'", "not an integer"], read_esc50, tmp_path)
    write(path, ESC50_CSV.replace("2-102414-B-12.wav,2,", "2-102414-B-12.wav,7,"))
    expect_error(["line 4", "'fold'"], read_esc50, tmp_path)
    write(path, ESC50_CSV.replace(",12,crackling_fire", ",12,"))
    expect_error(["line 4", "'category'", "empty caption"], read_esc50, tmp_path)


# ---------------------------------------------------------------- UCF101 ---------------------


def ucf_files(root: Path) -> Path:
    lists = root / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 YoYo\r\n3 HandstandPushups\r\n")
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nYoYo/v_YoYo_g09_c02.avi 2\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n",
    )
    write(
        lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n"
    )
    write(lists / "testlist02.txt", "YoYo/v_YoYo_g02_c01.avi\r\n")
    return lists


def test_ucf101_lists_labels_and_paths(tmp_path):
    lists = ucf_files(tmp_path)
    videos = tmp_path / "UCF-101"
    train = read_ucf101(lists, 1, "train", video_dir=videos)
    assert [(r.video_id, r.label, r.captions) for r in train] == [
        ("v_ApplyEyeMakeup_g08_c01", 0, ("apply eye makeup",)),
        ("v_YoYo_g09_c02", 1, ("yo yo",)),
        ("v_HandStandPushups_g08_c01", 2, ("handstand pushups",)),
    ]
    assert train[0].video_path == videos / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi"
    test = read_ucf101(lists, 1, "test")
    assert [(r.video_id, r.label) for r in test] == [("v_ApplyEyeMakeup_g01_c01", 0), ("v_YoYo_g01_c01", 1)]
    assert [r.video_id for r in read_ucf101(lists, 2, "test")] == ["v_YoYo_g02_c01"]
    with pytest.raises(ValueError):
        read_ucf101(lists, 4, "train")


def test_ucf101_malformed(tmp_path):
    lists = ucf_files(tmp_path)
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g09_c02.avi 3\n",
    )
    expect_error(["trainlist01.txt", "line 2", "'label'"], read_ucf101, lists, 1, "train")
    write(lists / "testlist01.txt", "Juggling/v_Juggling_g01_c01.avi\n")
    expect_error(["testlist01.txt", "line 1", "Juggling"], read_ucf101, lists, 1, "test")
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi\n")
    expect_error(["trainlist01.txt", "line 1", "found 1 fields"], read_ucf101, lists, 1, "train")
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\n3 YoYo\n")
    expect_error(["classInd.txt", "'index'", "without gaps"], read_ucf101, lists, 1, "test")
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\nx YoYo\n")
    expect_error(["classInd.txt", "line 2", "'index'"], read_ucf101, lists, 1, "test")


def test_msrvtt_official_validation_videos_leave_the_training_list(tmp_path):
    root = msrvtt_files(tmp_path)
    write(root / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo1\nvideo2\n")  # video1 is "validate"
    assert "video1" not in {r.video_id for r in read_msrvtt(root, "train")}
    assert "video1" in {r.video_id for r in read_msrvtt(root, "train", val_source="csv")}
