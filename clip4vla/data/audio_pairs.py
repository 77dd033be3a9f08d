"""Silent clips paired with the audio of the most similar training clip (the paper's missing audio).

MSR-VTT and VATEX have videos without an audio track. The paper pairs each with "the audio of the
most similar video, chosen from the training set by cosine similarity of global vision features".
``scripts/pair_missing_audio.py`` computes that pairing once, with a frozen pre-trained encoder,
and writes it to a file (``data.audio_pairs``); :func:`apply_audio_pairs` gives the silent records
their donor's audio. Never a random clip's audio (REF does that).

File format (JSON)::

    {"format": "clip4vla-audio-pairs", "corpus": "msrvtt", "model": "...",
     "pairs": {"<silent video_id>": {"donor": "<training video_id>", "cosine": 0.93}, ...}}
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

from clip4vla.data.records import ClipRecord
from clip4vla.files import write_text_atomic

__all__ = ["PAIRS_FORMAT", "apply_audio_pairs", "read_audio_pairs", "write_audio_pairs"]

PAIRS_FORMAT = "clip4vla-audio-pairs"


def write_audio_pairs(path: str | os.PathLike, pairs: dict[str, dict[str, Any]], **about: Any) -> Path:
    return write_text_atomic(path, json.dumps({"format": PAIRS_FORMAT, **about, "pairs": pairs}, indent=1))


def read_audio_pairs(path: str | os.PathLike) -> dict[str, str]:
    """``{silent video_id: donor video_id}``; a malformed file is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"data.audio_pairs: {path} not found (make it with scripts/pair_missing_audio.py)") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable audio-pairs file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != PAIRS_FORMAT or not isinstance(data.get("pairs"), dict):
        raise ValueError(f"{path}: not an audio-pairs file (expected {{'format': '{PAIRS_FORMAT}', 'pairs': {{...}}}})")
    out = {}
    for vid, entry in data["pairs"].items():
        donor = entry.get("donor") if isinstance(entry, dict) else None
        if not isinstance(donor, str) or not donor:
            raise ValueError(f"{path}: pairs[{vid!r}] has no donor video id")
        out[str(vid)] = donor
    return out


def apply_audio_pairs(
    splits: Iterable[list[ClipRecord]], train: list[ClipRecord], pairs: dict[str, str], source: str
) -> int:
    """Give every paired silent record (in place, in every split) its donor's audio; the count.

    Donors must be training clips; every paired id must be a clip of the splits read (a file made
    for another corpus or split would otherwise pair nothing, silently). Raises ``ValueError``.
    """
    donors = {r.video_id: r for r in train}
    bad_donors = sorted({d for d in pairs.values() if d not in donors})
    if bad_donors:
        raise ValueError(f"{source}: donors that are not training clips of this corpus: {bad_donors[:5]}")
    found: set[str] = set()
    count = 0
    for records in splits:
        for i, record in enumerate(records):
            donor_id = pairs.get(record.video_id)
            if donor_id is None:
                continue
            found.add(record.video_id)
            donor = donors[donor_id]
            if donor.start is not None or donor.end is not None:
                raise ValueError(f"{source}: donor {donor_id} is a window of a longer video; pairing needs clip media")
            audio = donor.audio_path if donor.audio_path is not None else donor.video_path
            records[i] = dataclasses.replace(record, audio_path=audio, audio_from=donor_id)
            count += 1
    unknown = sorted(set(pairs) - found)
    if unknown:
        raise ValueError(f"{source} names {len(unknown)} videos that are in none of the splits read, e.g. {unknown[:5]}")
    return count
