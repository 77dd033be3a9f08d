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
    package_data={"clip4vla.text": ["bpe_simple_vocab_16e6.txt.gz", "LICENSE-NOTE.txt"],
                  "clip4vla.serve": ["static/*.html", "static/*.js", "static/*.css"]},
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
        "flask>=3.0",  # clip4vla-search serve: the local search page (werkzeug answers Range requests)
        "pillow>=9.0",  # the search page's thumbnails (also a matplotlib dependency)
        "safetensors>=0.4",  # model folders and open_clip's .safetensors checkpoints, read without any pickle
        "huggingface_hub>=0.20",  # Hub ids (org/name) resolved to a cached snapshot; the only way we reach the Hub
    ],
    entry_points={"console_scripts": ["clip4vla-search = clip4vla.search:main"]},
    extras_require={
        # selenium drives Debian's chromium + chromium-driver in the search page's browser test
        # tensorboard: the dashboard's tests read the event files with TensorBoard's own reader
        # open-clip-torch: the parity tests build tiny open_clip models as the oracle (never at run time)
        # onnx*: tests/test_onnx_export.py exports the encoders and checks them in onnxruntime
        "dev": ["pytest>=7.4", "selenium>=4.20", "tensorboard>=2.14", "open-clip-torch==3.3.0",
                "onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
        # extras are named as pip normalises a request (PEP 685: "open-clip-tests", never "open_clip_tests")
        "open-clip-tests": ["open-clip-torch==3.3.0"],
        # train.tensorboard: true writes TensorBoard event files beside metrics.jsonl
        "tensorboard": ["tensorboard>=2.14"],
        # the ONNX export (clip4vla.models.onnx_export) and its parity test; onnxruntime is the test
        # oracle, never needed to train
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
        # only the front-end benchmark compares against librosa
        "bench": ["librosa>=0.10"],
    },
)
