"""The built-in synthetic tri-modal dataset: real H.264/AAC clips in MSR-VTT format.

Why it looks like this: every code path (decode -> front-end -> encoders -> losses -> fine-tune ->
evaluate) must run with no download, and the model must be able to show what the paper claims.
So the sound is *caused by* what is seen, and each modality also carries something the other
does not:

* picture: a coloured shape (circle/square/triangle/diamond) of a size (small/large) moves in a
  direction (left/right/up/down) and bounces off the walls;
* sound that follows from the picture: the colour sets the event pattern and its timbre (red
  siren, green chirps, blue hum, yellow beeps, purple noise bursts, white ticks) or, for voices,
  the vowel sequence; the size sets the pitch register (small = high, large = low); the pitch
  follows the shape's height and the stereo pan its horizontal position; a click sounds at every
  wall bounce, in sync;
* picture only: the shape. Sound only: voice vs event sound and the background noise (rain,
  wind, static, rumble, quiet).

Why the colour and not the shape drives the sound: the quick start's tiny from-scratch ViT learns
colour and size in a few CPU minutes but not shape (nearest-centroid probes of its video features:
colour 99 %, size 91 %, shape 30 % at chance 25 %; benchmarks/RESULTS.md), so a sound chosen by the
shape could not be matched from the picture. Shape stays in the picture and the captions, as the
attribute only the picture shows.

Captions name attributes of both modalities (4 shapes x 6 colours x 2 sizes x 4 directions x
voice/event x 5 backgrounds), so retrieval on ~100 test clips needs both senses and is not
saturated by class matching. No attribute is a continuous per-clip value visible in both
modalities but unrelated across them (no colour or pitch jitter): such a value would let
video<->audio training memorise its training clips instead of learning the shared structure.
About 30 % of the sounding clips are voices (``audio_type`` "vb"),
the rest event sounds ("nb"); 8 % of the clips have no audio stream at all.

Layout written under ``out_dir``::

    videos/video<i>.mp4           H.264 112x112 10 fps (+ AAC 16 kHz stereo unless silent)
    MSRVTT_data.json              {"info", "videos": [{video_id, split, category, ..., audio_type,
                                  has_audio, attributes}], "sentences": [{video_id, caption, sen_id}]}
    MSRVTT_train.9k.csv           video_id of the train split (the 9k-style training list)
    MSRVTT_JSFUSION_test.csv      key,vid_key,video_id,sentence (one caption per test clip)
    MSRVTT_val.csv                same format for the validation split (our extension)
    synthetic_meta.json           written last: the "dataset is complete" marker

Everything is a function of ``seed`` (each clip draws from its own ``(seed, index)`` stream, so the
result does not depend on worker scheduling).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import multiprocessing as mp
import os
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

__all__ = [
    "make_synthetic_dataset", "is_complete", "ClipSpec", "sample_clip_specs", "render_frames", "render_audio",
    "bounce_times", "captions_for",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 6  # bump when the content changes, so stale datasets are regenerated
FPS = 10
FRAME_SIZE = 112
SAMPLE_RATE = 16000
DURATIONS = (3.0, 3.5, 4.0, 4.5, 5.0)
SILENT_FRACTION = 0.08
VOICE_FRACTION = 0.30  # of the sounding clips
SPLIT_FRACTIONS = (("train", 0.7), ("validate", 0.1), ("test", 0.2))

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 45, 45),
    "green": (45, 190, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 210, 45),
    "purple": (155, 65, 205),
    "white": (235, 235, 235),
}
BACKGROUND = (30, 30, 34)  # dark grey, under a vertical shading gradient
SIZES = {"small": (14.0, 18.0), "large": (26.0, 32.0)}  # radius range in pixels (large enough for a from-scratch ViT to see)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image y grows down
EVENT_SOUNDS = ("hum", "beeps", "chirps", "bursts", "ticks", "siren")
COLOUR_EVENTS = {"red": "siren", "green": "chirps", "blue": "hum", "yellow": "beeps", "purple": "bursts", "white": "ticks"}
SOUND_CATEGORIES = EVENT_SOUNDS + ("voice", "silent")
NOISES = ("rain", "wind", "static", "rumble", "quiet")
# Register set by the size: small shapes sound high, large ones low (Hz at mid height).
EVENT_PITCH = {"small": 800.0, "large": 300.0}
VOICE_PITCH = {"small": 220.0, "large": 110.0}
# Each colour "says" its own vowel sequence (formants F1-F3 in Hz, adult male averages).
VOWEL_FORMANTS = {
    "ah": (730, 1090, 2440),
    "ee": (270, 2290, 3010),
    "oo": (300, 870, 2240),
    "eh": (530, 1840, 2480),
    "oh": (570, 840, 2410),
}
COLOUR_VOWELS = {
    "red": ("oo", "oh", "ah"),
    "green": ("ah", "eh", "ee"),
    "blue": ("ee", "ah", "oo"),
    "yellow": ("oh", "ee", "eh"),
    "purple": ("eh", "oo", "oh"),
    "white": ("ah", "oo", "ee"),
}


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip (small and picklable for the worker pool)."""

    index: int
    video_id: str
    seed: int
    split: str
    duration: float
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    size: str
    radius: float
    direction: str
    speed: float  # pixels per second
    start_xy: tuple[float, float]
    sound: str  # one of SOUND_CATEGORIES
    noise: str  # one of NOISES ("quiet" for silent clips too, unused there)

    @property
    def has_audio(self) -> bool:
        return self.sound != "silent"

    @property
    def audio_type(self) -> str:
        return "vb" if self.sound == "voice" else "nb"

    @property
    def pitch_word(self) -> str:
        return "high" if self.size == "small" else "low"


# ------------------------------------------------------------------------------------ sampling
def _split_of(position: int, num_clips: int) -> str:
    """Split by position in a seeded permutation: first 70 % train, next 10 % validate, rest test."""
    n_train = int(round(SPLIT_FRACTIONS[0][1] * num_clips))
    n_val = int(round(SPLIT_FRACTIONS[1][1] * num_clips))
    if position < n_train:
        return "train"
    return "validate" if position < n_train + n_val else "test"


def sample_clip_specs(num_clips: int, seed: int) -> list[ClipSpec]:
    """The deterministic list of clip specifications for ``(num_clips, seed)``."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    top = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    order = top.permutation(num_clips)
    position = np.empty(num_clips, np.int64)
    position[order] = np.arange(num_clips)
    # Exact counts (not per-clip coin flips) so small datasets still contain every kind.
    n_silent = int(round(SILENT_FRACTION * num_clips))
    kinds = np.array(["silent"] * n_silent + ["sound"] * (num_clips - n_silent))
    top.shuffle(kinds)
    sounding = np.flatnonzero(kinds == "sound")
    n_voice = int(round(VOICE_FRACTION * len(sounding)))
    kinds[top.choice(sounding, n_voice, replace=False)] = "voice"

    specs = []
    for i in range(num_clips):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        # No per-clip continuous nuisance (colour jitter, background tint, pitch jitter): a value
        # unique to each clip in both modalities lets video<->audio training memorise the training
        # clips instead of learning the shared structure (colour->timbre, size->register,
        # height->pitch, x->pan), and zero-shot v->a retrieval then stays at chance.
        rgb = COLOURS[colour]
        size = list(SIZES)[rng.integers(len(SIZES))]
        radius = float(rng.uniform(*SIZES[size]))
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        speed = float(rng.uniform(25.0, 45.0))
        lo, hi = radius + 1.0, FRAME_SIZE - radius - 1.0
        start_xy = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        duration = float(DURATIONS[rng.integers(len(DURATIONS))])
        # The colour picks the event sound (as it picks the vowels of a voice): the most audible
        # property of a clip then follows from what is seen, so video<->audio has structure to
        # learn beyond register and pitch.
        event = COLOUR_EVENTS[colour]
        noise = NOISES[rng.integers(len(NOISES))]
        sound = {"silent": "silent", "voice": "voice"}.get(str(kinds[i]), event)
        specs.append(
            ClipSpec(
                index=i, video_id=f"video{i}", seed=seed, split=_split_of(int(position[i]), num_clips),
                duration=duration, shape=shape, colour=colour, rgb=rgb, size=size,
                radius=radius, direction=direction, speed=speed, start_xy=start_xy, sound=sound,
                noise="quiet" if sound == "silent" else noise,
            )
        )
    return specs


# ------------------------------------------------------------------------------------- motion
def _positions(spec: ClipSpec, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(x, y)`` at times ``t``: constant speed along one axis, reflected at the walls."""
    dx, dy = DIRECTIONS[spec.direction]
    r = spec.radius
    span = FRAME_SIZE - 2 * r

    def reflect(p0: float, v: float) -> np.ndarray:
        u = np.mod(p0 - r + v * t, 2 * span)
        return r + np.where(u <= span, u, 2 * span - u)

    x = reflect(spec.start_xy[0], dx * spec.speed) if dx else np.full_like(t, spec.start_xy[0])
    y = reflect(spec.start_xy[1], dy * spec.speed) if dy else np.full_like(t, spec.start_xy[1])
    return x, y


def bounce_times(spec: ClipSpec) -> np.ndarray:
    """Times (s) at which the shape touches a wall during the clip (where the clicks are)."""
    dx, dy = DIRECTIONS[spec.direction]
    p0 = spec.start_xy[0] if dx else spec.start_xy[1]
    sign = dx or dy
    span = FRAME_SIZE - 2 * spec.radius
    first = (FRAME_SIZE - spec.radius - p0) if sign > 0 else (p0 - spec.radius)
    times = (first + span * np.arange(64)) / spec.speed
    return times[times < spec.duration]


# -------------------------------------------------------------------------------------- video
def render_frames(spec: ClipSpec) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` at ``FPS``: the moving shape over a dark gradient background."""
    n = int(round(spec.duration * FPS))
    x, y = _positions(spec, np.arange(n) / FPS)
    grid = np.arange(FRAME_SIZE, dtype=np.float32) + 0.5
    ddx = grid[None, None, :] - x[:, None, None].astype(np.float32)  # [T,1,W]
    ddy = grid[None, :, None] - y[:, None, None].astype(np.float32)  # [T,H,1]
    r = spec.radius
    if spec.shape == "circle":
        mask = ddx**2 + ddy**2 <= r * r
    elif spec.shape == "square":
        mask = np.maximum(np.abs(ddx), np.abs(ddy)) <= 0.85 * r
    elif spec.shape == "diamond":
        mask = np.abs(ddx) + np.abs(ddy) <= 1.2 * r
    else:  # equilateral triangle pointing up, centred on its centroid
        mask = (ddy <= 0.5 * r) & (np.abs(ddx) * math.sqrt(3.0) <= ddy + r)
    shade = np.linspace(0.8, 1.2, FRAME_SIZE, dtype=np.float32)[:, None, None]  # vertical gradient
    background = np.clip(np.array(BACKGROUND, np.float32)[None, None, :] * shade, 0, 255).astype(np.uint8)
    frames = np.broadcast_to(background, (n, FRAME_SIZE, FRAME_SIZE, 3)).copy()
    frames[mask] = np.array(spec.rgb, np.uint8)
    return frames


# -------------------------------------------------------------------------------------- audio
def _gate(t: np.ndarray, period: float, on: float, ramp: float = 0.005) -> np.ndarray:
    """Repeating on/off envelope with short linear ramps (no clicks at the edges)."""
    phase = np.mod(t, period)
    return np.clip(np.minimum(phase, on - phase) / ramp, 0.0, 1.0)


_EVENT_TIMBRES = {"hum": "sine", "ticks": "sine", "beeps": "odd", "bursts": "odd", "chirps": "odd2", "siren": "saw"}


def _harmonic_weights(event: str, k: np.ndarray) -> np.ndarray:
    """Timbre of each event sound as harmonic amplitudes (k = 1, 2, ...)."""
    timbre = _EVENT_TIMBRES[event]
    if timbre == "sine":
        return (k == 1).astype(np.float32)
    if timbre == "odd":  # square-wave-like
        return np.where(k % 2 == 1, 1.0 / k, 0.0).astype(np.float32)
    if timbre == "odd2":  # triangle-wave-like
        return np.where(k % 2 == 1, 1.0 / k**2, 0.0).astype(np.float32)
    return (1.0 / k).astype(np.float32)  # sawtooth


def _additive(freq: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum of harmonics ``k*freq(t)`` with ``weights [K]`` or ``[K, N]``, band-limited below 0.45 sr."""
    # Accumulate the phase in float64, wrap it, then work in float32 (k * phase stays accurate to
    # ~1e-4 rad for the <= 40 harmonics used here, and float32 halves the cost of the big sin).
    phase = np.mod((2 * np.pi / SAMPLE_RATE) * np.cumsum(freq, dtype=np.float64), 2 * np.pi).astype(np.float32)
    k = np.arange(1, weights.shape[0] + 1, dtype=np.float32)[:, None]
    w = weights if weights.ndim == 2 else weights[:, None]
    w = np.where(k * freq[None, :].astype(np.float32) < 0.45 * SAMPLE_RATE, w, 0.0).astype(np.float32)
    return np.einsum("kn,kn->n", np.sin(k * phase[None, :]), w)


def _filtered_noise(rng: np.random.Generator, shape: tuple[int, ...], lowpass: float | None = None,
                    highpass: float | None = None) -> np.ndarray:
    """White noise shaped in the frequency domain (4th-order-like magnitude responses)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    n = shape[-1]
    spec = np.fft.rfft(noise, axis=-1)
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    gain = np.ones_like(f)
    if lowpass is not None:
        gain /= 1.0 + (f / lowpass) ** 4
    if highpass is not None:
        ratio = (f / highpass) ** 4
        gain *= ratio / (1.0 + ratio)
    out = np.fft.irfft(spec * gain, n=n, axis=-1).astype(np.float32)
    return out / (out.std() + 1e-8)


def _event_sound(spec: ClipSpec, t: np.ndarray, height: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    freq = EVENT_PITCH[spec.size] * 2.0 ** (height - 0.5)  # one octave over the height
    k = np.arange(1, 25, dtype=np.float32)
    weights = _harmonic_weights(spec.sound, k)
    if spec.sound == "hum":
        return _additive(freq, weights) * (0.85 + 0.15 * np.sin(2 * np.pi * 3.0 * t)).astype(np.float32)
    if spec.sound == "beeps":
        return _additive(freq, weights) * _gate(t, 0.5, 0.15)
    if spec.sound == "chirps":  # each chirp sweeps up one octave in 0.3 s
        sweep = 2.0 ** (np.mod(t, 0.4) / 0.3)
        return _additive(freq * sweep, weights) * _gate(t, 0.4, 0.3)
    if spec.sound == "siren":
        return _additive(freq * 2.0 ** (0.5 * np.sin(2 * np.pi * 0.8 * t)), weights)
    if spec.sound == "ticks":  # 8 decaying pings per second
        return _additive(freq, weights) * np.exp(-np.mod(t, 0.125) / 0.012).astype(np.float32)
    if spec.sound == "bursts":  # narrow-band noise around the harmonics, 0.2 s every 0.7 s
        band = _filtered_noise(rng, t.shape, lowpass=150.0)
        return _additive(freq, weights) * band * _gate(t, 0.7, 0.2)
    raise ValueError(f"unknown event sound {spec.sound!r}")


def _voice(spec: ClipSpec, t: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Formant synthesis: a harmonic source shaped by the current vowel's three resonances."""
    f0 = VOICE_PITCH[spec.size] * 2.0 ** ((height - 0.5) * 0.5)
    f0 = f0 * (1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t))  # light vibrato
    period, on = 0.42, 0.32  # syllables
    vowels = COLOUR_VOWELS[spec.colour]
    syllable = (np.floor(t / period).astype(np.int64)) % len(vowels)
    formants = np.array([VOWEL_FORMANTS[v] for v in vowels], np.float32)[syllable]  # [N, 3]
    n_harm = int(4000 // f0.min())
    hop = 160  # resonance weights change slowly: compute them every 10 ms, then hold
    k = np.arange(1, n_harm + 1, dtype=np.float32)[:, None, None]
    fk = k * f0[None, ::hop, None].astype(np.float32)  # [K, C, 1]
    bandwidth = np.array([80.0, 100.0, 120.0], np.float32)
    gain = np.array([1.0, 0.6, 0.3], np.float32)
    resonance = (gain / (1.0 + ((fk - formants[None, ::hop, :]) / bandwidth) ** 2)).sum(-1)  # [K, C]
    weights = np.repeat(resonance / k[:, :, 0], hop, axis=1)[:, : t.shape[0]]  # source tilt 1/k
    return _additive(f0, weights) * _gate(t, period, on, ramp=0.03)


def _background(kind: str, n: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stereo background ``[2, N]`` with unit-ish RMS (independent channels: sounds diffuse)."""
    if kind == "quiet":
        return np.zeros((2, n), np.float32)
    if kind == "static":
        return rng.standard_normal((2, n)).astype(np.float32)
    if kind == "rumble":
        return _filtered_noise(rng, (2, n), lowpass=120.0)
    if kind == "wind":
        gust = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t + rng.uniform(0, 2 * np.pi))
        return _filtered_noise(rng, (2, n), lowpass=400.0) * gust.astype(np.float32)
    if kind == "rain":  # hiss plus random droplets
        hiss = 0.5 * _filtered_noise(rng, (2, n), highpass=1000.0)
        drops = (rng.random((2, n)) < 40.0 / SAMPLE_RATE) * rng.uniform(1.0, 4.0, (2, n))
        kernel = np.exp(-np.arange(64) / 8.0) * rng.standard_normal(64)
        drops = np.stack([np.convolve(ch, kernel, mode="same") for ch in drops])  # 2 channels
        return (hiss + drops).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}")


def render_audio(spec: ClipSpec) -> np.ndarray | None:
    """float32 stereo ``[2, N]`` at ``SAMPLE_RATE`` (None for silent clips)."""
    if not spec.has_audio:
        return None
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, spec.index, 1]))
    n = int(round(spec.duration * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    x, y = _positions(spec, t)
    span = FRAME_SIZE - 2 * spec.radius
    height = 1.0 - (y - spec.radius) / span  # 1 at the top of the frame
    pan = (x - spec.radius) / span  # 0 = left wall, 1 = right wall
    source = _voice(spec, t, height) if spec.sound == "voice" else _event_sound(spec, t, height, rng)
    source = 0.1 * source / (np.sqrt(np.mean(source**2)) + 1e-8)
    stereo = np.stack([source * np.cos(pan * np.pi / 2), source * np.sin(pan * np.pi / 2)])
    click = (np.exp(-np.arange(96) / 16.0) * rng.standard_normal(96)).astype(np.float32)
    bx, _ = _positions(spec, bounce_times(spec))
    for tb, xb in zip(bounce_times(spec), bx):  # a handful of bounces per clip
        i0 = int(tb * SAMPLE_RATE)
        seg = click[: max(0, min(96, n - i0))]
        p = (xb - spec.radius) / span
        stereo[0, i0 : i0 + len(seg)] += 0.5 * seg * np.cos(p * np.pi / 2)
        stereo[1, i0 : i0 + len(seg)] += 0.5 * seg * np.sin(p * np.pi / 2)
    level = 0.04 if spec.noise == "rumble" else 0.03
    stereo = stereo + level * _background(spec.noise, n, t, rng)
    peak = float(np.abs(stereo).max())
    if peak > 0.9:
        stereo *= 0.9 / peak
    return stereo.astype(np.float32)


# ----------------------------------------------------------------------------------- captions
_SOUND_CLAUSE = {
    "hum": "a {p} hum drones",
    "beeps": "a {p} beep repeats",
    "chirps": "{p} chirps keep rising",
    "bursts": "{p} bursts of noise pulse",
    "ticks": "a {p} ticking goes on",
    "siren": "a {p} siren wails",
    "voice": "a {p} voice chants {v}",
}
_SOUND_NP = {
    "hum": "a {p} hum",
    "beeps": "{p} beeps",
    "chirps": "{p} rising chirps",
    "bursts": "{p} noise bursts",
    "ticks": "{p} ticking",
    "siren": "a {p} siren",
    "voice": "a {p} voice chanting {v}",
}
_NOISE_OVER = {
    "rain": "over the sound of rain",
    "wind": "over wind noise",
    "static": "over static hiss",
    "rumble": "over a deep rumble",
    "quiet": "with no background noise",
}
_NOISE_NP = {"rain": "rain", "wind": "wind", "static": "static hiss", "rumble": "a deep rumble", "quiet": "nothing else"}
_BOUNCES = {0: "without touching a wall", 1: "off one wall", 2: "off the walls twice"}


def captions_for(spec: ClipSpec) -> list[str]:
    """Five paraphrases; the first (used as the test query) names every attribute."""
    a = dict(s=spec.size, c=spec.colour, sh=spec.shape, d=spec.direction)
    bounces = _BOUNCES.get(len(bounce_times(spec)), "off the walls several times")
    if not spec.has_audio:
        return [
            "a {s} {c} {sh} moves {d} in silence".format(**a),
            "a silent clip: a {s} {c} {sh} slides {d}".format(**a),
            "a {c} {sh} travels {d} and bounces {b}; there is no sound".format(b=bounces, **a),
            "no sound at all, just a {s} {sh} in {c} heading {d}".format(**a),
            "a {s} {sh} coloured {c} goes {d} silently".format(**a),
        ]
    fill = dict(p=spec.pitch_word, v=" ".join(COLOUR_VOWELS[spec.colour]))
    clause = _SOUND_CLAUSE[spec.sound].format(**fill)
    np_ = _SOUND_NP[spec.sound].format(**fill)
    over, noise_np = _NOISE_OVER[spec.noise], _NOISE_NP[spec.noise]
    return [
        f"a {spec.size} {spec.colour} {spec.shape} moves {spec.direction} while {clause} {over}",
        f"{np_} {over} as a {spec.size} {spec.colour} {spec.shape} slides {spec.direction}",
        f"a {spec.colour} {spec.shape} travels {spec.direction} and bounces {bounces}; you hear {np_} and {noise_np}",
        f"{np_} {over}, and a {spec.size} {spec.shape} in {spec.colour} heading {spec.direction}",
        f"a {spec.size} {spec.shape} coloured {spec.colour} goes {spec.direction} with {np_} {over}",
    ]


# ------------------------------------------------------------------------------------ writing
def _encode_mp4(path: Path, frames: np.ndarray, audio: np.ndarray | None) -> None:
    """H.264 (1 keyframe per second, so seeking is cheap) + AAC; single-threaded = reproducible."""
    with av.open(str(path), "w", format="mp4") as container:
        # Constant QP, not CRF: this libx264's CRF rate control gave different bitstreams for the
        # same frames from run to run (decoded pixels differed by up to 37 levels); QP is exact.
        vs = container.add_stream("libx264", rate=FPS, options={"qp": "18", "preset": "veryfast", "g": str(FPS)})
        vs.width = vs.height = FRAME_SIZE
        vs.pix_fmt = "yuv420p"
        vs.codec_context.thread_count = 1
        if audio is not None:
            # the "fast" AAC coder halves the encoding time; its quality loss does not matter here
            aus = container.add_stream("aac", rate=SAMPLE_RATE, layout="stereo", options={"aac_coder": "fast"})
            aus.bit_rate = 128000
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(vs.encode(frame))
        container.mux(vs.encode())
        if audio is not None:
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout="stereo")
            aframe.sample_rate, aframe.pts = SAMPLE_RATE, 0
            container.mux(aus.encode(aframe))
            container.mux(aus.encode())


def _render_clip(job: tuple[ClipSpec, str]) -> str:
    spec, videos_dir = job
    final = Path(videos_dir) / f"{spec.video_id}.mp4"
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        _encode_mp4(tmp, render_frames(spec), render_audio(spec))
        os.replace(tmp, final)  # a killed run never leaves a half-written clip under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return spec.video_id


def _read_json(path: Path, default: dict) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    return value if isinstance(value, dict) else default


def _annotations(specs: list[ClipSpec]) -> dict:
    videos, sentences = [], []
    for spec in specs:
        videos.append({
            "category": SOUND_CATEGORIES.index(spec.sound),
            "url": "",
            "video_id": spec.video_id,
            "start time": 0.0,
            "end time": spec.duration,
            "split": spec.split,
            "id": spec.index,
            "audio_type": spec.audio_type,  # our extension: [VB] / [NB] token for this clip
            "has_audio": spec.has_audio,
            "attributes": {
                "shape": spec.shape, "colour": spec.colour, "size": spec.size, "direction": spec.direction,
                "sound": spec.sound, "noise": spec.noise, "bounces": int(len(bounce_times(spec))),
            },
        })
        for caption in captions_for(spec):
            sentences.append({"caption": caption, "video_id": spec.video_id, "sen_id": len(sentences)})
    return {
        "info": {"description": "clip4vla synthetic tri-modal dataset (MSR-VTT layout)", "version": GENERATOR_VERSION},
        "videos": videos,
        "sentences": sentences,
    }


def _csv_text(header: list[str], rows: list[list]) -> str:
    from io import StringIO

    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _meta(num_clips: int, seed: int) -> dict:
    return {"generator": "clip4vla.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "num_clips": num_clips, "fps": FPS, "frame_size": FRAME_SIZE, "sample_rate": SAMPLE_RATE}


def is_complete(out_dir: str | Path, num_clips: int, seed: int) -> bool:
    """True if ``out_dir`` holds a finished dataset made with these settings."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "synthetic_meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = _meta(num_clips, seed)
    if any(meta.get(k) != v for k, v in expected.items()):
        return False
    return all((out_dir / "videos" / f"video{i}.mp4").is_file() for i in range(num_clips))


def _pool_context() -> mp.context.BaseContext:
    # fork starts workers in milliseconds; the workers only run numpy + PyAV (no torch, no CUDA).
    return mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")


def make_synthetic_dataset(
    out_dir: str | Path, num_clips: int = 300, seed: int = 0, workers: int = 2, progress: bool = True
) -> Path:
    """Write (or reuse) the synthetic dataset in ``out_dir`` and return ``out_dir``.

    Idempotent: if ``synthetic_meta.json`` (written last) matches ``num_clips``/``seed`` and every
    clip exists, returns at once. Clips are deterministic, so when the files on disk were made with
    the same settings (``synthetic_meta.json`` or, for an interrupted generation, the
    ``generating.json`` marker says so) only the missing clips are rendered; with other settings
    everything is. Stale ``video<i>.mp4`` files beyond ``num_clips`` are removed. Something that
    is not a file where a clip belongs (a folder named ``video3.mp4``) is an error naming it,
    raised before any work.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir, num_clips, seed):
        log.info("synthetic dataset already complete in %s", out_dir)
        return out_dir
    from clip4vla.files import write_text_atomic  # brings torch: only when there is work to do

    t0 = time.perf_counter()
    videos_dir = out_dir / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    specs = sample_clip_specs(num_clips, seed)
    blocked = [videos_dir / f"{s.video_id}.mp4" for s in specs
               if (videos_dir / f"{s.video_id}.mp4").exists() and not (videos_dir / f"{s.video_id}.mp4").is_file()]
    if blocked:
        raise FileExistsError(f"{blocked[0]} is not a file but a synthetic clip belongs there "
                              f"({len(blocked)} such paths); move it away and run again")
    expected = _meta(num_clips, seed)
    settings_match = any(_read_json(out_dir / name, {}).items() >= expected.items()
                         for name in ("synthetic_meta.json", "generating.json"))
    (out_dir / "synthetic_meta.json").unlink(missing_ok=True)  # incomplete until written again
    write_text_atomic(out_dir / "generating.json", json.dumps(expected))
    keep = {f"{s.video_id}.mp4" for s in specs}
    for p in videos_dir.iterdir():
        if (re.fullmatch(r"video\d+\.mp4", p.name) and p.name not in keep) or p.name.endswith(".tmp"):
            p.unlink()
    if settings_match:  # the clips on disk are these settings' clips: render only what is missing
        specs_to_render = [s for s in specs if not (videos_dir / f"{s.video_id}.mp4").is_file()]
        log.info("synthetic dataset: %d of %d clips missing in %s", len(specs_to_render), num_clips, out_dir)
    else:
        specs_to_render = specs

    jobs = [(spec, str(videos_dir)) for spec in specs_to_render]
    bar = tqdm(total=len(jobs), desc="synthetic clips", unit="clip", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with _pool_context().Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_render_clip, jobs, chunksize=4):
                bar.update()
    else:
        for job in jobs:
            _render_clip(job)
            bar.update()
    bar.close()

    ann = _annotations(specs)
    write_text_atomic(out_dir / "MSRVTT_data.json", json.dumps(ann, indent=1))
    train = [[s.video_id] for s in specs if s.split == "train"]
    write_text_atomic(out_dir / "MSRVTT_train.9k.csv", _csv_text(["video_id"], train))
    for split, name in (("test", "MSRVTT_JSFUSION_test.csv"), ("validate", "MSRVTT_val.csv")):
        rows = [[f"ret{j}", f"msr{s.index}", s.video_id, captions_for(s)[0]]
                for j, s in enumerate(s for s in specs if s.split == split)]
        write_text_atomic(out_dir / name, _csv_text(["key", "vid_key", "video_id", "sentence"], rows))
    meta = _meta(num_clips, seed)
    meta["splits"] = {name: sum(s.split == name for s in specs) for name, _ in SPLIT_FRACTIONS}
    meta["seconds_to_generate"] = round(time.perf_counter() - t0, 2)
    write_text_atomic(out_dir / "synthetic_meta.json", json.dumps(meta, indent=1))
    (out_dir / "generating.json").unlink(missing_ok=True)
    log.info("synthetic dataset: %d clips in %.1f s -> %s", num_clips, meta["seconds_to_generate"], out_dir)
    return out_dir
