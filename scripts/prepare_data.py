#!/usr/bin/env python
"""Prepare raw videos: 1-fps frames, 16 kHz stereo wav and a manifest; or index HowTo100M's captions.

    python scripts/prepare_data.py --videos data/synthetic/videos --out data/synthetic/prepared --workers 2
    python scripts/prepare_data.py --videos data/howto100m/videos --out data/howto100m/shards --shards --workers 16
    python scripts/prepare_data.py --howto100m-index data/howto100m/caption.json --out data/howto100m/spans
    python scripts/prepare_data.py --manifest data/my_videos/captions.csv --out data/my_videos_shards --shards

``--shards`` writes WebDataset tar shards instead of folders (``clip4vla.data.shards``: per clip one
JPEG member per frame, 16-bit WAV (or FLAC) audio and JSON metadata, which any WebDataset reader
decodes; ~``--shard-mb`` per shard, one file per ~1000 clips); set ``data.media: shards`` and
``data.<corpus>.shards_dir`` to train from them. Resumable too: finished shards are kept, the clips
in them skipped.

``--manifest`` (with ``--shards``) writes the files a manifest names (``data.corpus: manifest``)
under the ids its clips use, each file once, with its clips' ids, windows and captions in its JSON
member; give the same ``--manifest-root`` / ``--manifest-columns`` as ``data.manifest.root`` /
``columns``, then set ``data.manifest.shards_dir``.

The second form turns the transcript file into the compact span index (``clip4vla.data.span_table``:
~25 bytes per window, memory-mapped by every rank) once; then set ``data.howto100m.caption_path``
to the ``--out`` folder. It must use the same ``--min-seconds`` / ``--min-words`` as the config.

Resumable: rerunning skips the videos the manifest lists as done. Unreadable files are never
fatal: each is recorded in ``<out>/manifest.jsonl`` with its reason, and the run goes on, ends by
counting and naming them, and exits with status 0 (``--retry-errors`` tries them again). Exit
status 2: the run could not start (a missing folder, a bad flag or --meta file, shards of an
older layout in --out).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clip4vla.data.prepare import prepare_videos  # noqa: E402
from clip4vla.cli import HelpFormatter  # noqa: E402


def _failed_list(ids: list[str], label: str, shown: int = 10) -> str:
    """The line naming a run's unreadable files (its first ``shown`` ids), or nothing without any."""
    if not ids:
        return ""
    from clip4vla.embed import printable_path

    more = f", ... ({len(ids) - shown} more)" if len(ids) > shown else ""
    return f"\n{label}: " + ", ".join(printable_path(vid) for vid in ids[:shown]) + more


def _shard_mb(text: str) -> float:
    """argparse type for ``--shard-mb``: a finite size above zero, in MiB."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a size in MiB above 0, got {text!r}")
    return value


def _quality(text: str) -> int:
    """argparse type for ``--quality``: a JPEG quality, 1 to 100."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a whole number in [1, 100], got {text!r}")
    return value


def _columns(text: str) -> dict:
    """argparse type for ``--manifest-columns``: a mapping of our column names to the file's."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{video: filepath}}', got {text!r}")
    return {str(k): str(v) for k, v in value.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", type=Path, help="folder of raw videos (searched recursively)")
    source.add_argument("--howto100m-index", type=Path, metavar="CAPTION_FILE",
                        help="build the HowTo100M span index of caption.json / caption.pickle into --out")
    source.add_argument("--manifest", type=Path, nargs="+", metavar="MANIFEST",
                        help="with --shards: the files a .csv / .tsv / .jsonl manifest names (several: concatenated)")
    parser.add_argument("--manifest-root", type=Path, default=None,
                        help="with --manifest: data.manifest.root (default: the manifest's own folder)")
    parser.add_argument("--manifest-columns", type=_columns, default=None, metavar="MAPPING",
                        help="with --manifest: data.manifest.columns, e.g. '{video: filepath, caption: title}'")
    parser.add_argument("--shards", action="store_true", help="write WebDataset shards instead of folders")
    parser.add_argument("--shard-mb", type=_shard_mb, default=1024,
                        help="with --shards: close a shard once it holds this many MiB")
    parser.add_argument("--shard-audio", choices=("wav", "flac"), default="wav",
                        help="with --shards: 16-bit WAV (no decoding when read) or FLAC (about half the size)")
    parser.add_argument("--meta", type=Path, default=None,
                        help="with --shards: a JSON file {video_id: {...}} (captions, spans, audio type, ...) "
                             "stored in each clip's JSON member, so the shards describe themselves")
    parser.add_argument("--min-seconds", type=float, default=10.0,
                        help="with --howto100m-index: grow a caption window to at least this many seconds")
    parser.add_argument("--min-words", type=int, default=5,
                        help="with --howto100m-index: grow a caption window to at least this many words")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (0 or 1: in this process)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg",
                        help="frame image format of the folders (shards always hold JPEG)")
    parser.add_argument("--quality", type=_quality, default=95, help="JPEG quality, 1 to 100")
    parser.add_argument("--audio-subtype", default="FLOAT",
                        help="wav subtype of the folders (FLOAT exact, PCM_16 half the size)")
    parser.add_argument("--retry-errors", action="store_true", help="redo videos recorded as errors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers: expected 0 or more, got {args.workers}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.howto100m_index is not None:
        from clip4vla.data.records import AnnotationError
        from clip4vla.data.readers.howto100m import build_howto100m_index

        try:
            stats = build_howto100m_index(args.howto100m_index, args.out, args.min_seconds, args.min_words,
                                          progress=not args.no_progress)
        except (AnnotationError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{stats['videos']} videos ({stats['empty_videos']} without transcript): {stats['windows']} windows "
              f"in {stats['total_s']} s -> {args.out} (set data.howto100m.caption_path to it)")
        return 0
    if args.manifest is not None and not args.shards:
        parser.error("--manifest writes shards: add --shards (prepared folders: --videos ROOT, named by file stem)")
    if args.shards:
        from clip4vla.data.shards import write_shards

        try:
            meta, videos = None, args.videos
            if args.manifest is not None:
                from clip4vla.data.readers.manifest import manifest_shard_files, read_manifest

                table = read_manifest(args.manifest, root=args.manifest_root, columns=args.manifest_columns,
                                      report_dir=args.out)  # a bad row: an AnnotationError (a ValueError)
                videos, meta = manifest_shard_files(table)
            if args.meta is not None:
                import json

                given = json.loads(args.meta.read_text())
                if not isinstance(given, dict):
                    raise ValueError(f"{args.meta}: expected a JSON object {{video_id: {{...}}}}")
                meta = dict(meta or {})  # --meta's keys join (or replace) a manifest's per file
                for vid, extra in given.items():
                    meta[vid] = {**meta.get(vid, {}), **extra} if isinstance(extra, dict) else extra
            shards = write_shards(videos, args.out, shard_bytes=int(args.shard_mb * 2**20), workers=args.workers,
                                  quality=args.quality, meta=meta, progress=not args.no_progress,
                                  audio_format=args.shard_audio)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{shards.total} files: {shards.written} written, {shards.skipped} already in shards, "
              f"{len(shards.failed)} unreadable (see {args.out / 'manifest.jsonl'}); {shards.shards} shards in {args.out}"
              + _failed_list(shards.failed, "unreadable"))
        return 0
    try:
        summary = prepare_videos(args.videos, args.out, workers=args.workers, image_format=args.format,
                                 quality=args.quality, audio_subtype=args.audio_subtype,
                                 retry_errors=args.retry_errors, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{summary.total} videos: {summary.done} prepared, {summary.skipped} already done, "
          f"{len(summary.failed)} failed (see {summary.manifest})" + _failed_list(sorted(summary.failed), "failed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
