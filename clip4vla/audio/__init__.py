"""Audio: decoding, the log-mel front-ends, 224x224 segmentation and masking.

Typical use (one clip)::

    waveform = load_audio(path, start, end)                  # [2, N], 16 kHz stereo
    spec = log_mel(waveform, frontend="kaldi")               # [3, T, 224]
    segments, mask = to_segments(spec, max_segments=10)      # [10, 3, 224, 224], [10]
"""

from clip4vla.media_errors import MediaError
from clip4vla.audio.decode import AudioDecodeError, NoAudioError, load_audio, load_audio_file
from clip4vla.audio.frontend import FRONTENDS, N_MELS, frame_count, log_mel
from clip4vla.audio.masking import MASK_MODES, mask_spectrogram, segments_with_masked_copy
from clip4vla.audio.segments import SELECTIONS, empty_segments, to_segments

__all__ = [
    "MediaError",
    "AudioDecodeError",
    "NoAudioError",
    "load_audio",
    "load_audio_file",
    "log_mel",
    "frame_count",
    "to_segments",
    "empty_segments",
    "mask_spectrogram",
    "segments_with_masked_copy",
    "FRONTENDS",
    "N_MELS",
    "SELECTIONS",
    "MASK_MODES",
]
