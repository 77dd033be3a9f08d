"""Video: 1-fps frame decoding (raw PyAV or prepared frames) and the CLIP image transform."""

from clip4vla.video.decode import (
    VideoDecodeError,
    VideoInfo,
    frame_filename,
    list_prepared_seconds,
    load_prepared_frames,
    load_video_frames,
    read_one_fps,
)
from clip4vla.video.sampling import choose_seconds
from clip4vla.video.transform import ClipImageTransform, clip_transform

__all__ = [
    "ClipImageTransform",
    "clip_transform",
    "VideoDecodeError",
    "VideoInfo",
    "choose_seconds",
    "frame_filename",
    "list_prepared_seconds",
    "load_prepared_frames",
    "load_video_frames",
    "read_one_fps",
]
