"""Configs are data: dataclasses loaded from YAML, with ``--set a.b=value`` overrides.

Every run is described by one dataclass tree. Loading is strict on purpose: a typo in a YAML
file or an override (``optim.lr_rate``) must fail before any work starts, with the list of keys
that would have been valid, instead of silently training with a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass schema."""


# --------------------------------------------------------------------------------------------
# Schema: the sections every run shares
# --------------------------------------------------------------------------------------------

Arch = Literal["micro", "tiny", "vit_b_32", "vit_b_16"]
ARCHS = typing.get_args(Arch)
# CLIP's text context (every architecture above): a caption is at most this many tokens.
TEXT_CONTEXT = 77
# Beam widths above this only cost memory (each beam keeps its key/value caches per video).
MAX_BEAM = 64


@dataclasses.dataclass
class ModelConfig:
    # Where the weights come from: a model folder (runs/NAME/model), a Hub id (org/name[@revision]),
    # an older model.pt, a trainer checkpoint, an OpenAI CLIP file (ViT-B-32.pt; the audio encoder
    # then starts from its vision tower) or a released CLIP4VLA checkpoint. None builds `arch` with
    # random weights.
    init_from: str | None = None
    # None: the architecture of init_from, or "tiny" without one. Set with init_from, it must agree.
    arch: Arch | None = None
    # The towers' MLP activation, which no state dict records: OpenAI's CLIPs use QuickGELU,
    # open_clip's LAION / DataComp models exact GELU (same keys and shapes). None: what init_from
    # records (our model folders, OpenAI's TorchScript archives) or what open_clip_model implies; a file
    # that records none (a .safetensors, a plain state dict) and no declaration is an error. No state
    # dict records the attention heads either: a plain one is read with 64-wide heads (OpenAI's and
    # LAION's rule up to ViT-L) and refused where its widths cannot be split so; a hub folder's
    # open_clip_config.json records the heads (and the activation), and is followed.
    activation: Literal["quick_gelu", "gelu"] | None = None
    # init_from's open_clip model name (ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336, ...; a -quickgelu
    # suffix means QuickGELU): fixes the activation, and the file's tensors must have its shapes.
    open_clip_model: str | None = None
    # Paper Table 5 "+Initial": the audio ViT starts from the vision weights (when init_from has
    # no audio encoder of its own).
    audio_init: Literal["vision", "scratch"] = "vision"
    audio_type_token: bool = True
    # Paper: only the audio encoder trains (88 M parameters). REF trains all with lr * coef_lr.
    train_clip: bool = False
    grad_checkpointing: bool = False


@dataclasses.dataclass
class AudioConfig:
    frontend: Literal["kaldi", "reference"] = "kaldi"
    max_segments: int = 10
    selection: Literal["centre", "uniform"] = "centre"
    max_seconds: float = 60.0
    mask_mode: Literal["paper", "reference"] = "paper"

    def validate(self) -> None:
        _check(self.max_segments >= 1, "audio.max_segments", self.max_segments, "must be at least 1")
        _check(self.max_seconds > 0, "audio.max_seconds", self.max_seconds, "must be > 0 seconds")


# Where each corpus lives (one typed section per corpus, so a misspelt path key fails at start-up).
# Arguments are those of the corpus reader in clip4vla/data/readers/.


@dataclasses.dataclass
class SyntheticData:
    # The built-in dataset (MSR-VTT layout), generated here on first use.
    root: str = "data/synthetic"
    clips: int = 300
    seed: int = 0
    shards_dir: str | None = None  # its videos as WebDataset shards (data.media: shards)

    def validate(self) -> None:
        _check(self.clips >= 10, "data.synthetic.clips", self.clips, "must be at least 10 (train/val/test splits)")


@dataclasses.dataclass
class MsrvttData:
    annotation_dir: str  # MSRVTT_data.json, MSRVTT_train.9k.csv, MSRVTT_JSFUSION_test.csv [, MSRVTT_val.csv]
    video_dir: str | None = None
    prepared_dir: str | None = None
    # retrieval validation: the official "validate" videos, held out of the 9k training list
    # ("official"), or MSRVTT_val.csv ("csv")
    val_source: Literal["official", "csv"] = "official"
    shards_dir: str | None = None  # scripts/prepare_data.py --shards, for data.media: shards


@dataclasses.dataclass
class VatexData:
    annotation_dir: str  # vatex_training_v1.0.json, vatex_validation_v1.0.json, vatex_public_test_english_v1.1.json
    video_dir: str | None = None
    prepared_dir: str | None = None
    media: Literal["clip", "full"] = "clip"
    # Optional split lists (csv with column video_id), e.g. the 25991 / 1500 / 1500 retrieval split.
    train_csv: str | None = None
    val_csv: str | None = None
    test_csv: str | None = None
    shards_dir: str | None = None


@dataclasses.dataclass
class AudioCapsData:
    annotation_dir: str  # train.csv, val.csv, test.csv
    video_dir: str | None = None
    audio_dir: str | None = None
    prepared_dir: str | None = None
    media: Literal["clip", "full"] = "clip"
    shards_dir: str | None = None


@dataclasses.dataclass
class HowTo100MData:
    caption_path: str  # caption.json (or the original caption.pickle)
    video_dir: str | None = None
    prepared_dir: str | None = None
    # Optional text file, one video id per line: keep only these videos (e.g. those downloaded).
    video_ids_file: str | None = None
    min_seconds: float = 10.0
    min_words: int = 5
    shards_dir: str | None = None


@dataclasses.dataclass
class AudioSetData:
    segments_csv: str
    ontology_json: str
    video_dir: str | None = None
    audio_dir: str | None = None
    prepared_dir: str | None = None
    media: Literal["clip", "full"] = "clip"
    name_format: str = "{ytid}_{start}"
    shards_dir: str | None = None


@dataclasses.dataclass
class Esc50Data:
    root: str  # meta/esc50.csv, audio/*.wav
    prepared_dir: str | None = None


@dataclasses.dataclass
class Ucf101Data:
    list_dir: str  # ucfTrainTestlist/: classInd.txt, trainlist0N.txt, testlist0N.txt
    video_dir: str | None = None
    prepared_dir: str | None = None
    split: int = 1


@dataclasses.dataclass
class ManifestData:
    # Your own media: a .csv, .tsv or .jsonl file of media paths and captions, or a list of them
    # (concatenated); the columns are described in clip4vla/data/readers/manifest.py.
    path: str | tuple
    root: str | None = None  # relative media paths start here (None: each manifest's own folder)
    # our column name -> the file's, where they differ (e.g. {video: filepath, caption: title})
    columns: dict = dataclasses.field(default_factory=dict)
    # without a split column: train / val / test shares, by a hash of each file's path
    split_fractions: tuple = (0.8, 0.1, 0.1)
    # rows without an audio_type value; auto: a speech detector picks vb / nb from each clip's sound
    audio_type: Literal["vb", "nb", "auto"] = "vb"
    missing: Literal["error", "skip"] = "error"  # media files that do not exist
    report_dir: str | None = None  # where the list of missing media goes (None: train.output_dir, else the temp folder)
    prepared_dir: str | None = None  # scripts/prepare_data.py --videos ROOT --out DIR (files named by stem)
    # scripts/prepare_data.py --manifest PATH --out DIR --shards, for data.media: shards (files by manifest id)
    shards_dir: str | None = None

    def validate(self) -> None:
        from clip4vla.data.readers.manifest import COLUMNS

        paths = [self.path] if isinstance(self.path, str) else list(self.path)
        _check(bool(paths) and all(isinstance(p, str) and p.strip() for p in paths), "data.manifest.path", self.path,
               "must name a .csv, .tsv or .jsonl file (or a list of them)")
        _check(set(self.columns) <= set(COLUMNS), "data.manifest.columns", self.columns,
               f"maps our column names {list(COLUMNS)} to the file's")
        _check(all(isinstance(v, str) and v for v in self.columns.values()), "data.manifest.columns", self.columns,
               "values must be the file's column names")
        _check(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
               and abs(sum(self.split_fractions) - 1) < 1e-6, "data.manifest.split_fractions",
               list(self.split_fractions), "must be three non-negative shares (train, val, test) summing to 1")


Corpus = Literal["synthetic", "msrvtt", "vatex", "audiocaps", "howto100m", "audioset", "esc50", "ucf101",
                 "manifest"]
CORPORA = typing.get_args(Corpus)


@dataclasses.dataclass
class DataConfig:
    # The training corpus; "howto_audioset" mixes HowTo100M ([VB]) and AudioSet ([NB]) (paper).
    corpus: Literal[Corpus, "howto_audioset"] = "synthetic"
    # Validation and test come from this corpus (None: the training corpus), from these splits
    # (None: no validation / no final test).
    eval_corpus: Corpus | None = None
    # The split training reads; "+" joins several (ESC-50 has folds: "fold1+fold2+fold3+fold4").
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    synthetic: SyntheticData = dataclasses.field(default_factory=SyntheticData)
    msrvtt: MsrvttData | None = None
    vatex: VatexData | None = None
    audiocaps: AudioCapsData | None = None
    howto100m: HowTo100MData | None = None
    audioset: AudioSetData | None = None
    esc50: Esc50Data | None = None
    ucf101: Ucf101Data | None = None
    manifest: ManifestData | None = None
    # howto_audioset: per-corpus share of an epoch (e.g. [0.5, 0.5]); None = in proportion to size.
    mixture_weights: tuple | None = None
    # Silent clips paired with the audio of similar training clips (scripts/pair_missing_audio.py);
    # None: a silent clip is scored with vision alone.
    audio_pairs: str | None = None
    # raw files, the prepared folders (scripts/prepare_data.py), or WebDataset shards
    # (prepare_data.py --shards; each corpus in use names its folder in data.<corpus>.shards_dir)
    media: Literal["raw", "prepared", "shards"] = "raw"
    max_frames: int = 12
    frame_sampling: Literal["uniform", "head", "tail"] = "uniform"
    frame_order: Literal["normal", "reversed", "shuffled"] = "normal"
    max_words: int = 32
    num_workers: int = 2
    # Keep decoded frames/spectrograms in memory across epochs (small sets, num_workers 0).
    cache_decoded: bool = False

    def validate(self) -> None:
        _check(self.max_frames >= 1, "data.max_frames", self.max_frames, "must be at least 1")
        _check(3 <= self.max_words <= TEXT_CONTEXT, "data.max_words", self.max_words,
               f"must lie in [3, {TEXT_CONTEXT}] ([SOT], a word, [EOT] up to CLIP's text context)")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _check(all(part.strip() for part in self.train_split.split("+")), "data.train_split", self.train_split,
               "must name a split (several joined by +)")
        if self.mixture_weights is not None:
            _check(all(w >= 0 for w in self.mixture_weights) and sum(self.mixture_weights) > 0, "data.mixture_weights",
                   list(self.mixture_weights), "must be non-negative with a positive sum")
        if self.media == "shards":
            in_use = ["howto100m", "audioset"] if self.corpus == "howto_audioset" else [self.corpus]
            if self.eval_corpus is not None:
                in_use.append(self.eval_corpus)
            for corpus in dict.fromkeys(in_use):
                _check(getattr(getattr(self, corpus, None), "shards_dir", None) is not None, f"data.{corpus}.shards_dir",
                       None, "is needed with data.media: shards (write them with scripts/prepare_data.py --shards)")


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-7
    coef_lr: float = 1.0
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    warmup: float = 0.1
    grad_clip: float = 1.0

    def validate(self) -> None:
        for key in ("lr", "coef_lr", "grad_clip", "eps"):
            _check(getattr(self, key) > 0, f"optim.{key}", getattr(self, key), "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(0 <= self.warmup < 1, "optim.warmup", self.warmup, "is a fraction of the run in [0, 1)")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", list(self.betas),
               "must be two numbers in [0, 1)")


@dataclasses.dataclass
class CardSettings:
    """What the model card of <output_dir>/model/README.md says that the run cannot know itself."""

    name: str | None = None  # the card's title (None: the output folder's name)
    license: str | None = None  # a Hub licence id (mit, apache-2.0, cc-by-4.0, ...); None: "not stated"
    description: str | None = None  # a paragraph of your own, under "what the model is"
    tags: tuple = ()  # extra Hub tags
    datasets: tuple = ()  # Hub dataset ids the model was trained on (the card names the corpora anyway)

    def validate(self) -> None:
        for key in ("tags", "datasets"):
            values = getattr(self, key)
            _check(all(isinstance(v, str) and v.strip() and "\n" not in v for v in values), f"train.card.{key}",
                   list(values), "must be a list of one-line names")
        for key in ("name", "license"):
            value = getattr(self, key)
            _check(value is None or (value.strip() and "\n" not in value), f"train.card.{key}", value,
                   "must be one line (or null)")


@dataclasses.dataclass
class TrainConfig:
    output_dir: str = "runs/pretrain"
    epochs: int = 10
    # Global batch per optimiser step is batch_size * accum_steps (all of it serves as negatives).
    batch_size: int = 256
    accum_steps: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # ddp: every rank holds the whole model; fsdp: the trainable towers' transformer blocks are
    # sharded over the ranks with FSDP2 (large backbones; clip4vla/train/fsdp.py says what and why)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # torch.compile the towers' transformer blocks (inductor; clip4vla/train/compile.py)
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    # Validation cadence, independent of checkpoints: every N steps, else every N epochs.
    eval_every_steps: int = 0
    eval_every_epochs: int = 1
    checkpoint_every_steps: int = 0  # 0: once per epoch
    keep_last: int = 3
    max_steps: int = 0  # 0: run all epochs
    # Also write metrics.jsonl's rows as TensorBoard events (<output_dir>/tensorboard; pip install -e ".[tensorboard]").
    tensorboard: bool = False
    # The validation metric that picks best.pt (None: the task's, e.g. t2v/R1; CIDEr for captions).
    select_metric: str | None = None
    # Which weights become <output_dir>/model/ and face the test split: the last step's or the
    # best validation's (None: the task's default; fine-tuning selects on validation, never on test).
    export: Literal["last", "best"] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # How long a rank may wait for the others (a barrier, a gradient all-reduce) before every rank
    # stops with a message naming the one that did not answer. Validation runs on rank 0 while the
    # others wait, so keep it above the longest validation.
    dist_timeout_s: float = 1800.0
    # The model card (<output_dir>/model/README.md): licence, description, Hub tags and dataset ids.
    card: CardSettings = dataclasses.field(default_factory=CardSettings)

    def validate(self) -> None:
        self.card.validate()
        for key in ("batch_size", "accum_steps", "epochs", "log_every", "eval_every_epochs", "keep_last"):
            _check(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "must be at least 1")
        for key in ("eval_every_steps", "checkpoint_every_steps", "max_steps"):
            _check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "must be >= 0 (0 = off / per epoch)")
        _check(bool(self.output_dir.strip()), "train.output_dir", self.output_dir, "must name a folder")
        _check(self.dist_timeout_s > 0, "train.dist_timeout_s", self.dist_timeout_s, "must be > 0 seconds")
        _check(self.seed >= 0, "train.seed", self.seed, "must be >= 0")


@dataclasses.dataclass
class RunConfig:
    """The sections every task shares; each task's config adds its own section."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------
# Schema: one section per task
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PretrainSection:
    intra_modal: bool = True
    # The video-audio NCE term of Eq. 5 (false: text-audio alone; Table 5 rows 1-2, before "+Inter-modal NCE").
    video_audio: bool = True
    learnable_scale: bool = False
    # None: fixed 100 (REF), or CLIP's 1/0.07 when learnable.
    init_scale: float | None = None
    ref_extras: bool = False
    # Also train text<->video (not in the paper, whose CLIP towers come aligned): for towers
    # trained from scratch, e.g. the synthetic quick start without a CLIP checkpoint.
    text_video: bool = False

    def validate(self) -> None:
        _check_scale(self.init_scale, "pretrain.init_scale")


@dataclasses.dataclass
class PretrainConfig(RunConfig):
    pretrain: PretrainSection = dataclasses.field(default_factory=PretrainSection)


@dataclasses.dataclass
class RetrievalSection:
    fusion: Literal["g2g", "g2l", "l2l"] = "g2g"
    fusion_layers: int = 4
    # what the video side is made of: vision, audio, or both (evaluation reports all three)
    modality: Literal["v", "a", "av"] = "av"
    # the audio type token: each clip's own ("clip"), "vb", "nb", both tokens ("both"), or the
    # mixing ratio w of [VB] and [NB] (REF: 0.5 for MSR-VTT and VATEX, 1.0 for AudioCaps)
    audio_type: Literal["clip", "vb", "nb", "both"] | float = 0.5
    # symmetric InfoNCE (paper), or text->video only (what REF trains)
    loss: Literal["symmetric", "t2v"] = "symmetric"
    # an epoch visits every caption once ("captions", as CLIP4Clip), or every video once with
    # one random caption ("videos")
    epoch: Literal["captions", "videos"] = "captions"
    learnable_scale: bool = False
    # None: fixed 100 (REF), or CLIP's 1/0.07 when learnable
    init_scale: float | None = None
    # modalities the final test reports
    test_modalities: tuple = ("v", "a", "av")

    def validate(self) -> None:
        _check(self.fusion_layers >= 1, "retrieval.fusion_layers", self.fusion_layers, "must be at least 1")
        _check_ratio(self.audio_type, "retrieval.audio_type")
        _check_scale(self.init_scale, "retrieval.init_scale")
        _check(len(self.test_modalities) > 0 and set(self.test_modalities) <= {"v", "a", "av"},
               "retrieval.test_modalities", list(self.test_modalities), "must be a non-empty list of v, a, av")


@dataclasses.dataclass
class RetrievalConfig(RunConfig):
    retrieval: RetrievalSection = dataclasses.field(default_factory=RetrievalSection)


@dataclasses.dataclass
class CaptionSection:
    fusion_layers: int = 4
    # what the generator sees besides the caption so far: vision, audio, or both
    modality: Literal["v", "a", "av"] = "av"
    audio_type: Literal["clip", "vb", "nb", "both"] | float = 0.5
    # REF also trains the padding positions after [EOT] (predicting id 0): an option
    train_on_padding: bool = False
    # decoding: beam width for the test (1 = greedy), and for validation (CIDEr picks best.pt)
    beam: int = 5
    val_beam: int = 1
    # the best ending is chosen by log-probability / length ** length_penalty (0: none)
    length_penalty: float = 0.0

    def validate(self) -> None:
        _check(self.fusion_layers >= 1, "caption.fusion_layers", self.fusion_layers, "must be at least 1")
        for key in ("beam", "val_beam"):
            _check(1 <= getattr(self, key) <= MAX_BEAM, f"caption.{key}", getattr(self, key),
                   f"must lie in [1, {MAX_BEAM}] (1 = greedy)")
        _check(self.length_penalty >= 0, "caption.length_penalty", self.length_penalty, "must be >= 0")
        _check_ratio(self.audio_type, "caption.audio_type")


@dataclasses.dataclass
class CaptionConfig(RunConfig):
    caption: CaptionSection = dataclasses.field(default_factory=CaptionSection)


@dataclasses.dataclass
class ProbeSection:
    # linear probes (Table 6), zero-shot classification by prompts, or both
    mode: Literal["linear", "zero_shot", "both"] = "both"
    # UCF101's probe input; ESC-50's is always the audio encoder's
    ucf101_features: Literal["video", "audio", "video+audio"] = "video+audio"
    audio_type: Literal["vb", "nb", "auto"] | float = "nb"  # the paper probes ESC-50 with [NB]
    ucf101_splits: tuple = (1, 2, 3)
    # L2 strengths tried on a held-out slice of the training folds (never the test fold)
    weight_decays: tuple = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    val_fraction: float = 0.2
    max_iter: int = 300  # Newton steps per fit (a cap: ~10-20 reach float64 precision)
    seed: int = 0  # picks the held-out slice of the training folds
    esc50_prompt: str = "the sound of a {}"
    ucf101_prompt: str = "a video of {}"
    manifest_prompt: str = "a video of {}"  # data.corpus: manifest, its label column's class names

    def validate(self) -> None:
        _check(set(self.ucf101_splits) <= {1, 2, 3} and len(self.ucf101_splits) > 0, "probe.ucf101_splits",
               list(self.ucf101_splits), "must be a non-empty list of 1, 2, 3")
        _check(len(self.weight_decays) > 0 and all(w > 0 for w in self.weight_decays), "probe.weight_decays",
               list(self.weight_decays), "must be a non-empty list of numbers > 0 (the fit's unique optimum needs one)")
        _check(0 < self.val_fraction < 1, "probe.val_fraction", self.val_fraction, "is a fraction in (0, 1)")
        _check(self.max_iter >= 1, "probe.max_iter", self.max_iter, "must be at least 1")
        for key in ("esc50_prompt", "ucf101_prompt", "manifest_prompt"):
            _check("{}" in getattr(self, key), f"probe.{key}", getattr(self, key), "must contain {} for the class name")
        _check_ratio(self.audio_type, "probe.audio_type")


@dataclasses.dataclass
class ProbeConfig(RunConfig):
    probe: ProbeSection = dataclasses.field(default_factory=ProbeSection)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert one YAML value against a field annotation (the few types configs use)."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for section {annotation.__name__}, got {value!r}")
        return _build(annotation, value, where)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-7" (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _build(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys"
            f"{' in ' + where if where else ''}: {sorted(fields)}"
        )
    required = [
        name for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in data
    ]
    if required:
        raise ConfigError(f"missing required config key(s) {[prefix + k for k in required]}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    return cls(**kwargs)


def _section_class(hint: Any) -> type | None:
    """The dataclass behind a section annotation (``X`` or an optional section ``X | None``)."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return options[0]
    return None


def _set_path(tree: dict, cls: type, dotted: str, value: Any) -> None:
    """Insert ``value`` at ``a.b.c`` in a nested dict, validating each key against the schema."""
    keys = dotted.split(".")
    node, node_cls = tree, cls
    for depth, key in enumerate(keys):
        field_names = {f.name for f in dataclasses.fields(node_cls)}
        if key not in field_names:
            where = ".".join(keys[:depth]) or "<top level>"
            raise ConfigError(f"unknown config key {dotted!r}: {key!r} is not valid in {where}; valid keys: {sorted(field_names)}")
        hint = typing.get_type_hints(node_cls)[key]
        if depth == len(keys) - 1:
            node[key] = value
            return
        section = _section_class(hint)
        if section is None:
            raise ConfigError(f"config key {dotted!r}: {'.'.join(keys[:depth + 1])} is a value, not a section")
        if node.get(key) is None:  # an optional section (data.msrvtt) that the file left out
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"config key {dotted!r}: {'.'.join(keys[:depth + 1])} is not a mapping in the file")
        node_cls = section


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-4"`` -> ``("optim.lr", 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value {raw!r} is not valid YAML ({reason})") from None
    return key.strip(), value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file plus ``key.path=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded or {}
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, cls, key, value)
    try:
        config = _build(cls, data)
        if isinstance(config, RunConfig):
            validate_config(config)
        return config
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {rule}")


def validate_config(config: RunConfig) -> None:
    """Values the schema's types allow but no run can use: one ConfigError naming the key.

    Checked when the config is loaded, before any data or model work, so a zero batch size or a
    zero-frame clip is a message at start-up rather than a crash (or a silent all-skipped run)
    minutes later. Every float must be finite; then each section checks its own values
    (``validate()``), so a new task's section brings its own rules.
    """
    fields = list(_fields(config))
    for key, value in fields:
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, float):
                _check(math.isfinite(number), key, number, "must be a finite number")
    for _, value in fields:
        if dataclasses.is_dataclass(value) and hasattr(value, "validate"):
            value.validate()


def _fields(tree: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """Every field of a config tree with its dotted key; a section after its own fields."""
    for field in dataclasses.fields(tree):
        value, key = getattr(tree, field.name), f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{key}.")
        yield key, value


def _check_ratio(value: str | float, key: str) -> None:
    _check(isinstance(value, str) or 0 <= value <= 1, key, value, "a mixing ratio must lie in [0, 1]")


def _check_scale(scale: float | None, key: str) -> None:
    _check(scale is None or 0 < scale <= 1000, key, scale,
           "is the contrastive logit scale (1/temperature): a number in (0, 1000], or null for the default")


def check_trainable(config: RunConfig) -> None:
    """A run must start from something: frozen towers with random weights can learn nothing.

    Checked by the trainer (not at load time, so configs can be built up programmatically).
    """
    mc = config.model
    _check(
        mc.train_clip or mc.init_from is not None, "model.train_clip", mc.train_clip,
        "freezes the text and vision towers, but without model.init_from they are random: set "
        "model.init_from (e.g. OpenAI's ViT-B-32.pt) or model.train_clip=true",
    )


def config_to_dict(config: Any) -> dict:
    """Plain-Python dict of a config tree (tuples become lists so YAML stays readable)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_text(config: Any) -> str:
    """The resolved config as YAML for ``--print-config``: every key ``--set`` can change, with its value.

    An optional section that is not set (``data.msrvtt``) is ``null`` there, which hides the keys
    ``--set data.msrvtt.KEY=VALUE`` takes: they follow it as comments, with their defaults, so the
    text still loads as the same config.
    """
    return "".join(_section_lines(config, "", ""))


def _section_lines(section: Any, indent: str, prefix: str) -> typing.Iterator[str]:
    hints = typing.get_type_hints(type(section))
    for field in dataclasses.fields(section):
        value, key = getattr(section, field.name), f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            yield f"{indent}{field.name}:\n"
            yield from _section_lines(value, indent + "  ", f"{key}.")
            continue
        unset = _section_class(hints[field.name]) if value is None else None
        if unset is None:
            text = yaml.safe_dump({field.name: _plain(value)}, sort_keys=False)
            yield "".join(f"{indent}{line}\n" for line in text.splitlines())
            continue
        yield f"{indent}{field.name}: null  # not set; its keys (--set {key}.KEY=VALUE):\n"
        for item in dataclasses.fields(unset):
            if item.default is not dataclasses.MISSING:
                shown = _flow(item.name, item.default)
            elif item.default_factory is not dataclasses.MISSING:
                shown = _flow(item.name, item.default_factory())
            else:
                shown = f"{item.name}: (required)"
            yield f"{indent}#   {shown}\n"


def _flow(name: str, value: Any) -> str:
    """``name: value`` on one line, as YAML writes it (a list or mapping in flow style)."""
    value = _plain(value)
    style = None if isinstance(value, (list, dict)) else False  # None: flow for collections of scalars
    return yaml.safe_dump({name: value}, default_flow_style=style, sort_keys=False, width=10**6).rstrip("\n")


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config next to a run's outputs, so every result can be reproduced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")
    return path
