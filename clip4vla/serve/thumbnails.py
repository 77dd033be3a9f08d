"""Small pictures for the result grid: a poster frame of a video's matched window, or the log-mel
spectrogram of a sound file's window (what the audio encoder sees), cached on disk.

Thumbnails are made lazily, the first time the page asks for one, and kept in a folder beside the
index (``<index stem>.thumbs``, e.g. ``.clip4vla-index.thumbs``: hidden, so indexing never mistakes
it for media). A cache entry is named by the file's path, size, modification time and window, so a
changed file gets a new picture and the old one is simply never asked for again. A folder that
cannot be written costs speed, not function: the picture is made again on every request.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import av
import numpy as np
import torch

from clip4vla.media_errors import MediaError

__all__ = ["ThumbnailCache", "file_key", "poster_jpeg", "spectrogram_jpeg", "thumbnail_folder"]

log = logging.getLogger(__name__)

WIDTH = 320  # pixels; the grid shows them at about 240, so a 2x screen stays sharp enough
SPECTROGRAM_HEIGHT = 180


def thumbnail_folder(index_path: Path) -> Path:
    """Where the thumbnails of ``index_path`` live (module docstring)."""
    return index_path.with_name(index_path.stem + ".thumbs")


def poster_jpeg(path: Path, seconds: float, width: int = WIDTH) -> bytes:
    """The first frame at or after ``seconds`` (the last one when the video ends earlier), as a JPEG
    ``width`` wide; ``MediaError`` for a file without a decodable picture."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if seconds > 0 and stream.time_base is not None:
                # seek lands on the key frame before the time; decode forward from there
                container.seek(int(seconds / stream.time_base), stream=stream, backward=True, any_frame=False)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is None or frame.time >= seconds:
                    break
    except (av.FFmpegError, OSError, UnicodeEncodeError) as err:  # the last: a name that is not UTF-8
        raise MediaError(f"{path}: no decodable picture ({err})") from err
    if chosen is None:
        raise MediaError(f"{path}: no decodable picture")
    image = chosen.to_image()
    image.thumbnail((width, width * 4))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=82)
    return out.getvalue()


def spectrogram_jpeg(path: Path, start: float, end: float, width: int = WIDTH, height: int = SPECTROGRAM_HEIGHT) -> bytes:
    """The log-mel spectrogram of ``[start, end)`` (the model's front-end: what the audio encoder
    hears), low frequencies at the bottom, as a JPEG (a PNG of smooth colours is ten times the
    size); ``MediaError`` for a file without sound."""
    from matplotlib import colormaps
    from PIL import Image

    from clip4vla.audio import load_audio, log_mel

    try:
        waveform = load_audio(path, start=start, end=max(end, start + 0.05), max_seconds=60.0)
    except UnicodeEncodeError as err:  # the audio decoder opens files by a UTF-8 name only
        raise MediaError(f"{path}: the audio decoder cannot open a name that is not UTF-8") from err
    mel = log_mel(waveform)[0].T.flip(0)  # [mel bins, T], low frequencies last (bottom)
    lo, hi = torch.quantile(mel.flatten()[:: max(1, mel.numel() // 100_000)], torch.tensor([0.02, 0.995]))
    scaled = ((mel - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1).numpy()
    rgb = (colormaps["magma"](scaled)[..., :3] * 255).astype(np.uint8)
    image = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails by file and window, made once and kept in ``folder`` (module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._warned = False

    def get(self, path: Path, key: str, start: float, end: float, sound_only: bool) -> bytes:
        """The JPEG thumbnail of window ``[start, end)`` of ``path``: its poster, or its sound only
        (``sound_only``: the spectrogram, for a sound file or a page showing sound); ``key``
        identifies the file's content (path, size, modification time), window and kind."""
        cached = self.folder / (hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".jpg")
        try:
            return cached.read_bytes()
        except OSError:
            pass
        if sound_only:
            data = spectrogram_jpeg(path, start, end)
        else:
            try:
                data = poster_jpeg(path, (start + end) / 2)
            except MediaError:  # a video whose pictures fail where its sound did not: show the sound
                data = spectrogram_jpeg(path, start, end)
        self._store(cached, data)
        return data

    def _store(self, cached: Path, data: bytes) -> None:
        from clip4vla.files import write_atomic

        try:
            self.folder.mkdir(exist_ok=True)
            write_atomic(cached, lambda fh: fh.write(data))
        except OSError as err:
            if not self._warned:  # once: every later thumbnail is simply made again
                log.warning("cannot keep thumbnails in %s (%s); they are made again on every request",
                            self.folder, err.strerror or err)
                self._warned = True


def file_key(rel: str, size: int, mtime_ns: int, window: int, spectrogram: bool = False) -> str:
    """What a cached thumbnail is named after: a changed file gets a new one."""
    return f"{rel}\0{size}\0{mtime_ns}\0{window}" + ("\0sound" if spectrogram else "")
