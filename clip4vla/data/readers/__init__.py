"""Annotation readers: one module per corpus, each turning the official files into ``ClipRecord``s.

Readers parse and validate only (no media decoding), raising ``AnnotationError`` (file, line or
JSON path, field) on a malformed row at start-up. ``READERS`` maps a dataset name to its reader
for config-driven construction; the arguments differ per dataset (see each reader's docstring).
"""

from typing import Callable

from clip4vla.data.readers.audiocaps import read_audiocaps
from clip4vla.data.readers.audioset import read_audioset
from clip4vla.data.readers.esc50 import read_esc50
from clip4vla.data.readers.howto100m import read_howto100m
from clip4vla.data.readers.msrvtt import read_msrvtt
from clip4vla.data.readers.ucf101 import read_ucf101
from clip4vla.data.readers.vatex import read_vatex
from clip4vla.data.records import ClipRecord

READERS: dict[str, Callable[..., list[ClipRecord]]] = {
    "msrvtt": read_msrvtt,
    "vatex": read_vatex,
    "audiocaps": read_audiocaps,
    "howto100m": read_howto100m,
    "audioset": read_audioset,
    "esc50": read_esc50,
    "ucf101": read_ucf101,
}

__all__ = [
    "READERS",
    "read_audiocaps",
    "read_audioset",
    "read_esc50",
    "read_howto100m",
    "read_msrvtt",
    "read_ucf101",
    "read_vatex",
]
