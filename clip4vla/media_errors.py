"""Shared base exception for media decoding (audio and video).

Audio (`clip4vla.audio`) and video (`clip4vla.video`) raise subclasses of
`MediaError`, so the data pipeline can catch every unreadable-media problem
with one ``except MediaError`` without importing either package.
"""


class MediaError(Exception):
    """Base class for errors raised while reading or decoding a media file."""
