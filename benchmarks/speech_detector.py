"""How well the cheap speech detector behind ``audio_type="auto"`` separates speech from other sound.

Three groups, each labelled speech / not speech:

* the synthetic clips' voices (formant-synthesised vowel sequences, [VB]) against their event
  sounds ([NB]), from a generated synthetic set;
* speech made with ``espeak-ng`` (several voices and speeds) against non-speech made with ``sox``
  (noises, tones, sweeps, beeps, plucked melodies, tremolo noise) and the one real recording found
  on this machine (a plucked string). No real non-speech recordings (ESC-50, AudioSet) can be
  downloaded here; sox's sounds stand in for them, which is a weaker test.

    PYTHONPATH=. python benchmarks/speech_detector.py [--synthetic data/synthetic]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from clip4vla.audio import NoAudioError, load_audio
from clip4vla.embed import looks_like_speech, speech_features

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "Please put the pasta in boiling water for ten minutes.",
    "Today we will learn how to change a bicycle tyre.", "First, cut the onions into small pieces.",
    "The weather will be sunny in the afternoon.", "Turn left at the second traffic light.",
    "This video shows how to paint a wooden fence.", "Make sure the glue is completely dry.",
]
VOICES = [("en", 160), ("en-us", 140), ("en+f3", 170), ("en+m3", 120), ("en-gb", 180), ("en+f2", 150)]
SOX_SOUNDS = {
    "white noise": "synth 4 whitenoise vol 0.3", "pink noise": "synth 4 pinknoise vol 0.4",
    "brown noise": "synth 4 brownnoise vol 0.5", "sine 440": "synth 4 sine 440 vol 0.4",
    "low hum 120": "synth 4 sine 120 vol 0.5", "sweep": "synth 4 sine 100-3000 vol 0.4",
    "square beeps": "synth 4 square 800 vol 0.3 tremolo 2 100", "saw buzz": "synth 4 sawtooth 220 vol 0.3",
    "pluck melody": "synth 0.5 pluck C4 : synth 0.5 pluck E4 : synth 0.5 pluck G4 : synth 0.5 pluck C5",
    "tremolo noise (rain-like)": "synth 4 pinknoise vol 0.4 tremolo 7 60",
    "wind-like": "synth 4 brownnoise vol 0.5 tremolo 0.3 80", "trapezium tone": "synth 4 trapezium 300 vol 0.3",
    "siren": "synth 4 sine 600-1200 vol 0.3 tremolo 0.5 30", "engine": "synth 4 square 60 vol 0.3 tremolo 25 40",
    "fast clicks": "synth 4 square 1000 vol 0.3 tremolo 16 100", "chord": "synth 4 sine 261 sine 329 sine 392 vol 0.3",
}


def synthetic_group(root: Path) -> list[tuple[str, bool, object]]:
    videos = json.loads((root / "MSRVTT_data.json").read_text())["videos"]
    out = []
    for v in videos:
        if not v["has_audio"]:
            continue
        try:
            wave = load_audio(root / "videos" / f"{v['video_id']}.mp4")
        except NoAudioError:
            continue
        out.append((v["attributes"]["sound"], v["audio_type"] == "vb", wave))
    return out


def generated_group(workdir: Path) -> list[tuple[str, bool, object]]:
    out = []
    for i, sentence in enumerate(SENTENCES):
        voice, speed = VOICES[i % len(VOICES)]
        path = workdir / f"speech{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), sentence], check=True)
        out.append((f"espeak {voice}", True, load_audio(path)))
    for name, effect in SOX_SOUNDS.items():
        path = workdir / f"{name.split()[0]}-{abs(hash(name)) % 1000}.wav"
        parts = effect.split(" : ")
        if len(parts) == 1:
            subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(path), *effect.split()], check=True)
        else:  # a sequence of notes
            pieces = []
            for j, part in enumerate(parts):
                piece = workdir / f"note{j}.wav"
                subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(piece), *part.split()], check=True)
                pieces.append(str(piece))
            subprocess.run(["sox", *pieces, str(path)], check=True)
        out.append((f"sox {name}", False, load_audio(path)))
    pluck = Path(np.__file__).parents[2] / "test" / "audiodata" / "pluck-pcm32.wav"
    if pluck.is_file():
        out.append(("recorded pluck", False, load_audio(pluck)))
    return out


def report(name: str, group: list[tuple[str, bool, object]]) -> None:
    rows = [(what, truth, looks_like_speech(wave), speech_features(wave)) for what, truth, wave in group]
    speech = [r for r in rows if r[1]]
    other = [r for r in rows if not r[1]]
    hit = sum(r[2] for r in speech)
    false = sum(r[2] for r in other)
    print(f"\n{name}: speech called speech {hit}/{len(speech)} ({100 * hit / max(1, len(speech)):.0f} %), "
          f"other sound called speech {false}/{len(other)} ({100 * false / max(1, len(other)):.0f} %)")
    kinds = sorted({r[0] for r in rows})
    for kind in kinds:
        of = [r for r in rows if r[0] == kind]
        features = np.array([r[3] for r in of])
        print(f"  {kind:<28} {'speech' if of[0][1] else 'other ':<7} called speech {sum(r[2] for r in of):>3}/{len(of):<4}"
              f" voiced {features[:, 0].mean():.2f}  pitch {features[:, 1].mean():4.0f} Hz  spread {features[:, 2].mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=Path, default=Path("data/synthetic"))
    args = parser.parse_args()
    report(f"synthetic clips ({args.synthetic})", synthetic_group(args.synthetic))
    with tempfile.TemporaryDirectory() as tmp:
        report("espeak-ng speech vs sox sounds", generated_group(Path(tmp)))


if __name__ == "__main__":
    main()
