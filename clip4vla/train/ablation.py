"""A paper table's ablation as ordinary runs of the one training loop (``scripts/ablate.py``).

A table (``configs/ablations/table5.yaml``) is a list of rows, each a list of config overrides, so
a researcher adds a row without code. Every row of every seed is one pre-training run of
:class:`clip4vla.train.loop.Trainer` in its own folder (``<out>/seed<k>/<i>_<slug>/``, with its
``model/``), run one after another in this process; then each row's exported model is scored
with the zero-shot retrieval evaluation (text->audio R@1/5/10/MdR) on the evaluation corpora, and
the table (mean and spread over seeds, the paper's numbers beside it for MSR-VTT and VATEX) is
printed and written as JSON and Markdown into ``<out>``.

Everything is checked before the first step (:func:`check_plan`: arguments, each run's config and
start file, the evaluation corpora, the folders an earlier invocation left). Re-running the
command is how a killed ablation continues: a row whose ``model/`` folder exists is skipped (after
checking it was trained with the same config, :data:`NOT_THE_RESULT` aside), a row with
checkpoints resumes through the loop's own bitwise resume, a row with neither starts. Evaluations
are kept per row. Each finished run is also written as a TensorBoard run from its log
(:func:`write_dashboard`), so the dashboard exists whatever ``train.tensorboard`` was.

Without ``model.init_from`` (the built-in synthetic data) there is no CLIP to start from, so a
stage 0 trains one first: the table's ``synthetic.stage0`` overrides on the config, once, shared by
every row and seed; its text and vision towers are written as an OpenAI-layout CLIP file that the
rows start from exactly as they would from ``ViT-B-32.pt`` (so ``model.audio_init`` applies).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from clip4vla.config import ConfigError, PretrainConfig, check_trainable, config_to_dict, load_config, parse_override
from clip4vla.files import write_text_atomic

__all__ = ["AblationError", "AblationInterrupted", "AblationTable", "STAGE0_CLIP", "dashboard_dir", "format_table",
           "load_table", "markdown_table", "run_ablation", "table_path", "write_dashboard"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent.parent
TABLES_DIR = REPO / "configs" / "ablations"
STAGE0_CLIP = "clip_towers.pt"  # <out>/stage0/<this>: the stand-in for OpenAI's ViT-B-32.pt
MODEL_NAME = "model"  # the model folder a finished run leaves (clip4vla.train.run_folder.MODEL_NAME)
EVAL_NAME = "ablation_eval.json"  # per row: its evaluations, so a re-run does not score it again
# <out>/<this>/rows/seed<k>/<i>_<row> and <out>/<this>/stage0: TensorBoard's view of the runs' logs
DASHBOARD = "tensorboard"
DASHBOARD_INSTEAD = "give another --output-dir"  # the way out of an unusable dashboard folder
METRICS = ("R1", "R5", "R10", "MedR")
HEADERS = ("R@1", "R@5", "R@10", "MdR")
# The only config keys a finished (or killed) row may be reused under with another value. Every
# other key takes part in the comparison: it changes what the row trains (its start file
# model.init_from included) or how it is scored.
NOT_THE_RESULT = frozenset({
    "train.output_dir",  # the row's folder itself: it moves with --output-dir
    "train.tensorboard", "train.log_every",  # how the run is watched: events, logging cadence
    "train.checkpoint_every_steps", "train.keep_last",  # how often its state is saved, how many kept
    # where it runs: the device, as the CPU type (never recorded), moves fp32 kernels' last digits only
    "train.device", "train.dist_timeout_s", "data.num_workers",
    # what the model card says about the row's model (words, not the model)
    "train.card.name", "train.card.license", "train.card.description", "train.card.tags", "train.card.datasets",
})
# evaluation corpora whose numbers the paper reports (Table 5)
PAPER_CORPORA = ("msrvtt", "vatex")


class AblationError(ValueError):
    """A table file, a row or an output folder the ablation cannot use (one line for the user)."""


@dataclasses.dataclass
class AblationRow:
    name: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_") or "row"


@dataclasses.dataclass
class AblationTable:
    """One ablation table: rows of overrides, what every row shares, and the paper's numbers."""

    name: str
    title: str
    rows: list[AblationRow]
    common: tuple[str, ...] = ()
    # the built-in synthetic path: stage 0 (the CLIP stand-in) and the rows' budgets
    stage0: tuple[str, ...] = ()
    synthetic_rows: tuple[str, ...] = ()
    paper: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)
    output_dir: str = "runs/ablation"
    source: str = ""


def table_path(table: str) -> Path:
    """``--table 5`` -> ``configs/ablations/table5.yaml``; a path to a YAML file is taken as is."""
    if re.fullmatch(r"\d+", table):
        path = TABLES_DIR / f"table{table}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in TABLES_DIR.glob("table*.yaml"))
            raise AblationError(f"--table {table}: no {path.relative_to(REPO)}; tables: {', '.join(known) or 'none'}")
        return path
    path = Path(table)
    if not path.is_file():
        raise AblationError(f"--table {table}: not a table number nor a YAML file")
    return path


def _overrides(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AblationError(f"{where}: expected a list of 'key.path=value' overrides, got {value!r}")
    for text in value:
        try:
            parse_override(text)
        except ConfigError as err:
            raise AblationError(f"{where}: {err}") from None
    return tuple(value)


def load_table(path: str | Path) -> AblationTable:
    """Read and check a table file (unknown keys refused, as in every config)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise AblationError(f"{path}: cannot read the table: {err}") from None
    if not isinstance(data, dict):
        raise AblationError(f"{path}: top level must be a mapping")
    known = {"name", "title", "rows", "common", "synthetic", "paper", "output_dir"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AblationError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    raw_rows = data.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise AblationError(f"{path}: 'rows' must be a non-empty list of {{name, set}}")
    rows = []
    for i, raw in enumerate(raw_rows, 1):
        if not isinstance(raw, dict) or set(raw) - {"name", "set"} or not isinstance(raw.get("name"), str):
            raise AblationError(f"{path}: row {i} must be a mapping with 'name' (text) and 'set' (overrides)")
        rows.append(AblationRow(raw["name"], _overrides(raw.get("set"), f"{path}: row {i} ({raw['name']})")))
    synthetic = data.get("synthetic") or {}
    if not isinstance(synthetic, dict) or set(synthetic) - {"stage0", "rows"}:
        raise AblationError(f"{path}: 'synthetic' must be a mapping with 'stage0' and 'rows' override lists")
    paper = data.get("paper") or {}
    if not isinstance(paper, dict):
        raise AblationError(f"{path}: 'paper' must map a corpus to one [R@1, R@5, R@10, MdR] list per row")
    for corpus, values in paper.items():
        ok = isinstance(values, list) and len(values) == len(rows) and all(
            isinstance(v, list) and len(v) == len(METRICS) and all(isinstance(x, (int, float)) for x in v) for v in values)
        if not ok:
            raise AblationError(f"{path}: paper.{corpus} must hold {len(rows)} rows of [R@1, R@5, R@10, MdR]")
    name = str(data.get("name") or path.stem)
    return AblationTable(
        name=name, title=str(data.get("title") or name), rows=rows,
        common=_overrides(data.get("common"), f"{path}: common"),
        stage0=_overrides(synthetic.get("stage0"), f"{path}: synthetic.stage0"),
        synthetic_rows=_overrides(synthetic.get("rows"), f"{path}: synthetic.rows"),
        paper={str(k): [[float(x) for x in row] for row in v] for k, v in paper.items()},
        output_dir=str(data.get("output_dir") or f"runs/ablation_{name}"), source=str(path),
    )


# ------------------------------------------------------------------------------------ the plan


@dataclasses.dataclass
class PlannedRun:
    label: str  # "stage 0", "seed 0 row 2 (+Initial)"
    config: PretrainConfig
    row: int | None = None  # index into table.rows (None: stage 0)
    seed: int | None = None


@dataclasses.dataclass
class Plan:
    stage0: PlannedRun | None
    runs: list[PlannedRun]
    evaluations: list[tuple[str, str]]  # (corpus, split)
    base: PretrainConfig  # the config with the user's overrides, before any row


def _load(config_path: Path, overrides: Sequence[str], where: str) -> PretrainConfig:
    try:
        return load_config(PretrainConfig, config_path, list(overrides))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _activation(stage0: PretrainConfig) -> list[str]:
    """A plain CLIP state dict does not record its towers' MLP activation: the rows name stage 0's."""
    if not hasattr(stage0.model, "activation"):
        return []
    from clip4vla.models.clip import CLIPConfig

    named = CLIPConfig.named(stage0.model.arch or "tiny")
    activation = stage0.model.activation or getattr(named, "activation", None)
    return [f"model.activation={activation}"] if activation else []


def make_plan(table: AblationTable, config_path: Path, overrides: Sequence[str], seeds: Sequence[int], out_dir: Path,
              eval_corpora: Sequence[str] = ()) -> Plan:
    """Every run's resolved config, checked before any of them starts.

    Overrides apply in this order: the config file, the table's ``common``, (synthetic path) its
    ``synthetic.rows``, the row's own, the user's ``--set``; then what the ablation itself decides
    (the seed, the folder, the start file, no test split: the export is scored afterwards).
    """
    base = _load(config_path, overrides, "the config with --set")
    if not seeds:
        raise AblationError("--seeds: give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise AblationError(f"--seeds {list(seeds)}: a seed is repeated")
    split = base.data.test_split
    if split is None:
        raise AblationError("the config has no data.test_split: the rows' models are scored on it")
    corpora = list(dict.fromkeys(eval_corpora or [base.data.eval_corpus or base.data.corpus]))
    synthetic = base.model.init_from is None
    stage0 = None
    start: list[str] = []
    if synthetic:
        if not table.stage0:
            raise AblationError(f"{table.source}: model.init_from is not set and the table has no synthetic.stage0 "
                                "to train a CLIP stand-in: --set model.init_from=/path/to/ViT-B-32.pt")
        stage_dir = out_dir / "stage0"
        stage0 = PlannedRun("stage 0 (CLIP stand-in: text and vision towers)",
                            _load(config_path, [*table.stage0, *overrides, f"train.output_dir={stage_dir}"], "stage 0"))
        start = [f"model.init_from={stage_dir / STAGE0_CLIP}", *_activation(stage0.config)]
    runs = []
    for seed in seeds:
        for i, row in enumerate(table.rows):
            folder = out_dir / f"seed{seed}" / f"{i + 1}_{row.slug}"
            sets = [*table.common, *(table.synthetic_rows if synthetic else ()), *row.overrides, *start, *overrides,
                    f"train.seed={seed}", f"train.output_dir={folder}", "data.test_split=null"]
            label = f"seed {seed} row {i + 1} ({row.name})"
            config = _load(config_path, sets, label)
            if config.model.train_clip is False and config.model.init_from is None:
                raise AblationError(f"{label}: frozen CLIP towers need model.init_from")
            runs.append(PlannedRun(label, config, row=i, seed=seed))
    return Plan(stage0, runs, [(c, split) for c in corpora], base)


# ------------------------------------------------------------------------------------ running


def _say(message: str) -> None:
    print(f"[ablation] {message}", file=sys.stderr, flush=True)


def _retrain_hint(folder: Path) -> str:
    return f"rm -r {folder}, then re-run the same command to train that row again"


def _stored_config(folder: Path, label: str) -> dict[str, Any]:
    """A row folder's ``config.yaml``: what it was trained with (a damaged file names its fix)."""
    path = folder / "config.yaml"
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise AblationError(f"{label}: {path} is not readable YAML ({getattr(err, 'problem', None) or 'damaged'}"
                            f"{where}), so what the row was trained with is unknown: {_retrain_hint(folder)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AblationError(f"{label}: cannot read {path} ({err}): {_retrain_hint(folder)}") from None
    if not isinstance(stored, dict):
        raise AblationError(f"{label}: {path} holds a {type(stored).__name__}, not a config (a mapping of sections), "
                            f"so what the row was trained with is unknown: {_retrain_hint(folder)}")
    return stored


def _check_same_config(folder: Path, config: PretrainConfig, label: str) -> None:
    """A finished or killed run is reused only for the config it was trained with."""
    from clip4vla.train.resume import config_changes

    if not (folder / "config.yaml").is_file():
        raise AblationError(f"{label}: {folder} holds a model or checkpoints but no config.yaml: "
                            f"{_retrain_hint(folder)}")
    stored = _stored_config(folder, label)
    changes = {k: v for k, v in config_changes(stored, config_to_dict(config)).items() if k not in NOT_THE_RESULT}
    if changes:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:4])
        more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
        raise AblationError(f"{label}: {folder} was trained with another config ({shown}{more}): give this config "
                            f"another --output-dir, or {_retrain_hint(folder)}")


def _stored_evaluations(run: PlannedRun) -> dict[str, Any]:
    """A row's kept scores (``ablation_eval.json``); a damaged file names its fix."""
    path = Path(run.config.train.output_dir) / EVAL_NAME
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        stored = err
    if not isinstance(stored, dict) or not all(isinstance(v, dict) and "t2a" in v for v in stored.values()):
        reason = f" ({stored})" if isinstance(stored, Exception) else ""
        raise AblationError(f"{run.label}: {path} is damaged{reason}: rm {path}, then re-run the same command "
                            "(the row's model is scored again; nothing is trained)")
    return stored


def _finished(folder: Path) -> bool:
    """The row's run exported its model folder (complete: it is written in one rename)."""
    from clip4vla.models.model_folder import is_model_folder

    return is_model_folder(folder / MODEL_NAME)


def check_folders(plan: Plan) -> None:
    """Before the first step: every run folder left by an earlier invocation is usable as it is."""
    for run in ([plan.stage0] if plan.stage0 else []) + plan.runs:
        folder = Path(run.config.train.output_dir)
        if folder.exists() and not folder.is_dir():
            raise AblationError(f"{run.label}: {folder} is a file, not the row's folder: move it away, or give "
                                "another --output-dir")
        if _finished(folder) or any((folder / "checkpoints").glob("ckpt_*")):
            _check_same_config(folder, run.config, run.label)
            _stored_evaluations(run)


def check_plan(plan: Plan, out_dir: Path, eval_corpora: Sequence[str], dashboard: bool = False) -> None:
    """Everything the runs and their scoring will need, before the first step (and before any
    folder is made): each run's config, its start file, the evaluation corpora, the folders."""
    from clip4vla.data.corpora import read_split
    from clip4vla.data.splits import ensure_synthetic
    from clip4vla.train.loop import start_file
    from clip4vla.train.pretrain import PretrainTask

    if out_dir.exists() and not out_dir.is_dir():
        raise AblationError(f"--output-dir {out_dir} is a file, not a folder")
    if dashboard:
        from clip4vla.train.tensorboard import check_event_folder

        check_event_folder(out_dir / DASHBOARD, DASHBOARD_INSTEAD)
    runs = ([plan.stage0] if plan.stage0 else []) + plan.runs
    stage0_file = str(Path(plan.stage0.config.train.output_dir) / STAGE0_CLIP) if plan.stage0 else None
    read: set[str] = set()
    for run in runs:
        try:
            check_trainable(run.config)
            if run.config.model.init_from != stage0_file:  # stage 0's is trained by this very command
                key = json.dumps(config_to_dict(run.config.model), sort_keys=True)
                if key not in read:
                    read.add(key)
                    start_file(run.config, PretrainTask, None)  # what the trainer reads first, read now
        except ConfigError as err:
            raise ConfigError(f"{run.label}: {err}") from None
        if run.config.train.tensorboard:
            from clip4vla.train.tensorboard import require_tensorboard

            require_tensorboard()
    split_name = "--eval-corpus" if eval_corpora else "the evaluation corpus"
    checked: set[str] = set()
    for run in plan.runs:  # each row is scored with its own data settings
        data = dataclasses.replace(run.config.data, test_split=plan.base.data.test_split)
        for corpus, split in plan.evaluations:
            key = json.dumps([corpus, split, config_to_dict(data)], sort_keys=True, default=str)
            if key in checked:
                continue
            checked.add(key)
            try:
                ensure_synthetic(data, corpus)
                records = read_split(data, corpus, split, "pretrain")
            except ValueError as err:
                raise AblationError(f"{split_name} {corpus}: {err}") from None
            if not records:
                raise AblationError(f"{split_name} {corpus}: its {split} split has no records")
    check_folders(plan)


class _SharedDecodes:
    """Decoded clips shared by every run of this process that reads the same data.

    Each run builds its own datasets; with ``data.cache_decoded`` each would decode the same clips
    again (about 20 s of 1200 synthetic clips per run on 2 cores, for 16 runs). The cached values
    depend only on the data and audio sections (the rows change model and loss settings), so the
    runs share one cache per split and data settings.
    """

    def __init__(self) -> None:
        self.caches: dict[str, dict] = {}

    def task_factory(self) -> Callable:
        from clip4vla.train.pretrain import PretrainTask

        caches = self.caches

        class SharedDecodeTask(PretrainTask):
            def datasets(self):  # noqa: ANN202 (the base class's type)
                data = super().datasets()
                key = json.dumps([config_to_dict(self.config.data), config_to_dict(self.config.audio)], sort_keys=True)
                for split in ("train", "val", "test"):
                    dataset = getattr(data, split)
                    cache = getattr(dataset, "_cache", None)
                    if isinstance(cache, dict) and dataset.options.cache_decoded:
                        # the inputs record the frame size, which follows the model each run starts from
                        dataset._cache = caches.setdefault(f"{split} {key} {dataset.options.inputs!r}", cache)
                return data

        return SharedDecodeTask


class AblationInterrupted(Exception):
    """SIGTERM stopped a run after saving its step: the same command continues the ablation."""


def train_run(run: PlannedRun, decodes: _SharedDecodes) -> str:
    """Train one run to its model folder: ``"skipped"`` (finished), ``"resumed"`` or ``"trained"``.

    Its folder was checked by :func:`check_folders`. The loop's messages suggest the training
    scripts' flags; the ones that can reach the user here are said again as ablate.py commands.
    """
    from clip4vla.train.loop import Trainer, TrainingInterrupted
    from clip4vla.train.run_folder import LOCK_NAME, ExportError, RunFolderLocked, RunLock

    folder = Path(run.config.train.output_dir)
    if _finished(folder):
        _say(f"{run.label}: finished earlier, skipped ({folder})")
        return "skipped"
    resume = any((folder / "checkpoints").glob("ckpt_*"))
    _say(f"{run.label}: {'resuming' if resume else 'training'} in {folder}")
    again = "re-run the same command to continue (finished rows are skipped, this one resumes from its checkpoint)"
    try:
        # without a checkpoint there is nothing to resume: leftovers (a best.pt) are the row's to replace
        trainer = Trainer(run.config, decodes.task_factory(), resume=resume, overwrite=not resume)
    except RunFolderLocked:
        raise AblationError(f"{run.label}: {folder} is in use by {RunLock(folder).holder()} (another ablate.py on this "
                            f"--output-dir?): wait for it to end, or use another --output-dir; if that run is dead, "
                            f"rm {folder / LOCK_NAME} and re-run the same command") from None
    try:
        trainer.fit()
    except TrainingInterrupted as stop:
        raise AblationInterrupted(f"{run.label}: SIGTERM: stopped after step {stop.step} of {stop.total_steps}; "
                                  f"{again}") from None
    except ExportError as err:
        raise AblationError(f"{run.label}: {folder / MODEL_NAME} was not written ({err.__cause__ or err}); free "
                            f"room, then {again}") from None
    finally:
        trainer.close()
    return "resumed" if resume else "trained"


def export_stage0(folder: Path) -> Path:
    """The stage-0 model's text and vision towers as an OpenAI-layout CLIP state dict."""
    import torch

    from clip4vla.files import write_atomic
    from clip4vla.models.checkpoints import load_model

    target = folder / STAGE0_CLIP
    if not target.is_file():
        model = load_model(folder / MODEL_NAME)
        state = {k: v.detach().clone() for k, v in model.clip.state_dict().items()}
        write_atomic(target, lambda f: torch.save(state, f))
    return target


def evaluate_run(run: PlannedRun, evaluations: Sequence[tuple[str, str]], base: PretrainConfig,
                 datasets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Zero-shot text->audio (with v2a, t2v and chance) of the run's model folder on each evaluation;
    kept in the run folder, so a re-run scores only what is missing. ``datasets`` keeps the decoded
    evaluation clips for the next row (the rows share the inputs: same data, same preprocessing)."""
    import torch

    from clip4vla.cli import resolve_device
    from clip4vla.data.dataset import SampleOptions
    from clip4vla.data.splits import evaluation_dataset
    from clip4vla.evaluation.zero_shot import zero_shot_retrieval
    from clip4vla.models.checkpoints import load_model

    folder = Path(run.config.train.output_dir)
    path = folder / EVAL_NAME
    stored = _stored_evaluations(run)
    missing = [(c, s) for c, s in evaluations if f"{c}/{s}" not in stored]
    if not missing:
        return stored
    device = resolve_device(run.config.train.device)
    model = load_model(folder / MODEL_NAME, device=device)
    # the row's config with the user's test split back (the rows train without one)
    config = dataclasses.replace(run.config, data=dataclasses.replace(run.config.data, test_split=base.data.test_split))
    for corpus, split in missing:
        _say(f"{run.label}: scoring its model on {corpus} {split}")
        options = SampleOptions.for_inference(model.preprocessing, config.data)
        # kept decoded across rows only where the config keeps its clips decoded (small sets)
        options = dataclasses.replace(options, cache_decoded=config.data.cache_decoded and config.data.num_workers == 0)
        key = json.dumps([corpus, split, repr(options), config_to_dict(config.data)], sort_keys=True)
        datasets = {} if datasets is None else datasets
        if key not in datasets:
            datasets[key] = evaluation_dataset(config, split, "pretrain", options, corpus=corpus)
        dataset = datasets[key]
        with torch.no_grad():
            result = zero_shot_retrieval(model, dataset, batch_size=config.train.batch_size, device=device,
                                         precision=config.train.precision)
        stored[f"{corpus}/{split}"] = {**result["retrieval"], "chance": result["chance"], "n_clips": result["n_clips"]}
        write_text_atomic(path, json.dumps(stored, indent=1))
    return stored


def dashboard_dir(out_dir: Path) -> Path:
    """What ``tensorboard --logdir`` shows the table's rows from (stage 0 is beside it)."""
    return out_dir / DASHBOARD / "rows"


def write_dashboard(run: PlannedRun, out_dir: Path, scores: dict[str, Any] | None = None) -> None:
    """A finished run's TensorBoard events, written from its ``metrics.jsonl`` (and the row's test
    scores at its last step), so the dashboard never depends on ``train.tensorboard``: a run
    named after its folder (``seed0/1_scratch``), stage 0 apart from the rows."""
    from clip4vla.plotting import read_metrics
    from clip4vla.train.tensorboard import write_events

    folder = Path(run.config.train.output_dir)
    rows, _ = read_metrics(folder)
    if scores:
        step = max((r["step"] for r in rows if isinstance(r.get("step"), int)), default=0)
        rows.append({"step": step, **{f"test/{key.split('/')[0]}/{task}/{metric}": value
                                      for key, result in scores.items() for task, values in result.items()
                                      if task != "chance" and isinstance(values, dict)
                                      for metric, value in values.items()}})
    target = out_dir / DASHBOARD / "stage0" if run.row is None else dashboard_dir(out_dir) / folder.relative_to(out_dir)
    write_events(target, rows, DASHBOARD_INSTEAD)


# ------------------------------------------------------------------------------------ the table


def _spread(values: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "values": values}


def summarise(table: AblationTable, plan: Plan, evaluated: dict[tuple[int, int], dict[str, Any]],
              seeds: Sequence[int]) -> dict[str, Any]:
    """The table as data: per row and evaluation, each metric's mean, std (n-1), min, max, values."""
    rows = []
    for i, row in enumerate(table.rows):
        results = {}
        for corpus, split in plan.evaluations:
            key = f"{corpus}/{split}"
            per_seed = [evaluated[(seed, i)][key] for seed in seeds]
            results[key] = {m: _spread([float(r["t2a"][m]) for r in per_seed]) for m in METRICS}
            results[key]["n_clips"] = per_seed[0]["n_clips"]
            results[key]["chance"] = per_seed[0]["chance"]
        paper = {c: dict(zip(METRICS, v[i])) for c, v in table.paper.items()}
        rows.append({"row": i + 1, "name": row.name, "overrides": list(row.overrides), "results": results,
                     "paper": paper})
    return {"table": table.name, "title": table.title, "task": "t2a", "seeds": list(seeds),
            "evaluations": [f"{c}/{s}" for c, s in plan.evaluations], "stage0": plan.stage0 is not None,
            "rows": rows}


def _cell(stats: dict[str, Any], metric: str, n_seeds: int) -> str:
    value = f"{stats[metric]['mean']:.1f}"
    return f"{value}±{stats[metric]['std']:.1f}" if n_seeds > 1 else value


def _blocks(summary: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(evaluation key, its corpus, whether the paper has numbers for it) per column block."""
    return [(key, key.split("/")[0], key.split("/")[0] in summary["rows"][0]["paper"]) for key in summary["evaluations"]]


def format_table(summary: dict[str, Any]) -> str:
    """The paper's layout: one column block per evaluation corpus (ours, then the paper's)."""
    n = len(summary["seeds"])
    blocks = _blocks(summary)
    name_w = max(len(r["name"]) for r in summary["rows"]) + 2
    cell_w = 12 if n > 1 else 7
    spread = f"mean ± std over {n} seeds ({', '.join(map(str, summary['seeds']))})" if n > 1 else f"seed {summary['seeds'][0]}"
    lines = [f"{summary['title']}: zero-shot text->audio retrieval, {spread}"]
    head, sub = " " * (4 + name_w), f"{'#':>3} {'components':<{name_w}}"
    for key, corpus, has_paper in blocks:
        first = summary["rows"][0]["results"][key]
        width = 4 * cell_w + (4 * 7 + 3 if has_paper else 0)
        head += f" | {(key + ' (' + str(first['n_clips']) + ' clips)' + ('   paper' if has_paper else '')):<{width}}"
        sub += " | " + "".join(f"{h:>{cell_w}}" for h in HEADERS) + ("   " + "".join(f"{h:>7}" for h in HEADERS) if has_paper else "")
    lines += [head.rstrip(), sub]
    for row in summary["rows"]:
        line = f"{row['row']:>3} {row['name']:<{name_w}}"
        for key, corpus, has_paper in blocks:
            stats = row["results"][key]
            line += " | " + "".join(f"{_cell(stats, m, n):>{cell_w}}" for m in METRICS)
            if has_paper:
                line += "   " + "".join(f"{row['paper'][corpus][m]:>7.1f}" for m in METRICS)
        lines.append(line)
    chance = f"{'':>3} {'chance':<{name_w}}"
    for key, _, has_paper in blocks:
        c = summary["rows"][0]["results"][key]["chance"]
        chance += " | " + "".join(f"{c[m]:>{cell_w}.1f}" for m in METRICS) + (" " * (3 + 28) if has_paper else "")
    lines.append(chance.rstrip())
    return "\n".join(lines)


def markdown_table(summary: dict[str, Any]) -> str:
    n = len(summary["seeds"])
    blocks = _blocks(summary)
    head = ["#", "components"]
    for key, corpus, has_paper in blocks:
        head += [f"{key} {h}" for h in HEADERS] + ([f"paper {corpus} {h}" for h in HEADERS] if has_paper else [])
    lines = [f"**{summary['title']}**: zero-shot text→audio retrieval"
             + (f", mean ± std over {n} seeds" if n > 1 else f", seed {summary['seeds'][0]}"), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["rows"]:
        cells = [str(row["row"]), row["name"]]
        for key, corpus, has_paper in blocks:
            cells += [_cell(row["results"][key], m, n).replace("±", " ± ") for m in METRICS]
            cells += [f"{row['paper'][corpus][m]:.1f}" for m in METRICS] if has_paper else []
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["", "chance"]
    for key, _, has_paper in blocks:
        c = summary["rows"][0]["results"][key]["chance"]
        cells += [f"{c[m]:.1f}" for m in METRICS] + (["", "", "", ""] if has_paper else [])
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_ablation(table: AblationTable, config_path: Path, overrides: Sequence[str] = (), seeds: Sequence[int] = (0,),
                 out_dir: Path | None = None, eval_corpora: Sequence[str] = ()) -> dict[str, Any]:
    """Train (or skip, or resume) every run, score every row, write ``<out>/<table>.json|md``."""
    out_dir = Path(out_dir or table.output_dir)
    from clip4vla.train.tensorboard import has_tensorboard

    plan = make_plan(table, config_path, overrides, seeds, out_dir, eval_corpora)
    dashboard = has_tensorboard()
    check_plan(plan, out_dir, eval_corpora, dashboard)
    if not dashboard:
        _say(f"no dashboard in {out_dir / DASHBOARD}: it needs the tensorboard package (pip install -e "
             "\".[tensorboard]\"); with it, re-run the same command: finished rows are skipped and their "
             "dashboard is written from their logs")
    started = time.perf_counter()
    decodes = _SharedDecodes()
    if plan.stage0 is not None:
        train_run(plan.stage0, decodes)
        export_stage0(Path(plan.stage0.config.train.output_dir))
        if dashboard:
            write_dashboard(plan.stage0, out_dir)
    evaluated: dict[tuple[int, int], dict[str, Any]] = {}
    statuses, eval_sets = {}, {}
    for run in plan.runs:
        statuses[run.label] = train_run(run, decodes)
        evaluated[(run.seed, run.row)] = evaluate_run(run, plan.evaluations, plan.base, eval_sets)
        if dashboard:
            write_dashboard(run, out_dir, evaluated[(run.seed, run.row)])
    summary = summarise(table, plan, evaluated, seeds)
    summary["runs"] = statuses
    summary["dashboard"] = str(dashboard_dir(out_dir)) if dashboard else None
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"{table.name}.json", json.dumps(summary, indent=1))
    write_text_atomic(out_dir / f"{table.name}.md", markdown_table(summary))
    return summary
