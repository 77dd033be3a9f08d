from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="clip4vla",
    version="0.2.0",
    description="CLIP4VLA: CLIP extended with an audio encoder for vision-language-audio pre-training",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["clip4vla", "clip4vla.*"]),
    package_data={"clip4vla.text": ["bpe_simple_vocab_16e6.txt.gz", "LICENSE-NOTE.txt"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "torchaudio>=2.1",
        "ftfy>=6.1",
        "regex",
        "numpy",
        "tqdm",
        "pyyaml",
        "pycocoevalcap",
        "av>=12.0",
        "soundfile>=0.12",
        "matplotlib",
        "ijson>=3.2",  # streams HowTo100M's caption.json into the span index
        "webdataset>=0.2.90",  # the tar shard format (writer; any WebDataset reader streams our shards)
    ],
    entry_points={"console_scripts": ["clip4vla-search = clip4vla.search:main"]},
    extras_require={
        "dev": ["pytest>=7.4"],
        # only the front-end benchmark compares against librosa
        "bench": ["librosa>=0.10"],
    },
)
