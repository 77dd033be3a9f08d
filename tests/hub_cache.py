"""A Hugging Face Hub cache laid out on disk as ``huggingface_hub`` itself lays it out, so tests
resolve Hub ids offline (HF_HUB_OFFLINE) and never reach the network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], ref: str = "main") -> Path:
    """A repository in huggingface_hub's cache layout: content-addressed blobs, a snapshot folder
    per commit whose files are relative symlinks to them, and a ref naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(COMMIT)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot
