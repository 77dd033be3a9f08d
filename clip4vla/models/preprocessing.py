"""How raw media became a model's inputs, stored inside every model file.

A model only works on inputs made the way its training inputs were: the same front-end, the same
number of frames and segments, the same caption length, the same type token. Writing these next
to the weights (``clip4vla.models.checkpoints``) means no user has to remember them, and
preprocessing cannot drift between training, evaluation, feature extraction and search.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

__all__ = ["Preprocessing"]

# "vb" | "nb" | "both" | mixing ratio w in [0, 1] | None (each clip's own type, as in pre-training)
AudioTypeSetting = Union[str, float, None]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    max_words: int = 32
    max_frames: int = 12
    frame_sampling: str = "uniform"
    image_size: int = 224
    frontend: str = "kaldi"
    max_segments: int = 10
    selection: str = "centre"
    max_seconds: float = 60.0
    # The type token the model was trained with; None: each clip's own ([VB] speech, [NB] events).
    audio_type: AudioTypeSetting = None

    def __post_init__(self) -> None:
        """A stored record is untrusted input: values no pipeline can use are refused here, so a
        crafted or damaged model file fails when it is read, not deep inside decoding."""
        for key in ("max_words", "max_frames", "image_size", "max_segments"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preprocessing {key}={value!r}: expected a whole number >= 1")
        for key, choices in (("frame_sampling", ("uniform", "head", "tail")), ("frontend", ("kaldi", "reference")),
                             ("selection", ("centre", "uniform"))):
            if getattr(self, key) not in choices:
                raise ValueError(f"preprocessing {key}={getattr(self, key)!r}: expected one of {list(choices)}")
        seconds = self.max_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
            raise ValueError(f"preprocessing max_seconds={seconds!r}: expected a finite number > 0")
        kind = self.audio_type
        ratio = not isinstance(kind, bool) and isinstance(kind, (int, float)) and 0 <= kind <= 1
        if not (kind is None or kind in ("vb", "nb", "both") or ratio):
            raise ValueError(f"preprocessing audio_type={kind!r}: expected null, vb, nb, both or a ratio in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "model file") -> Preprocessing:
        """Rebuild from a stored dict; unknown keys mean a newer format we cannot honour."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown preprocessing settings {unknown} (written by a newer clip4vla?)")
        try:
            return cls(**values)
        except ValueError as err:  # a value no pipeline can use: name the file it came from
            raise ValueError(f"{source}: {err}") from err
