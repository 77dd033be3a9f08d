"""The card a training run writes into its model folder: the run's own facts (corpora, clips,
schedule, the resolved config, the test table it printed) plus ``train.card``'s words."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clip4vla.config import RunConfig, config_text
from clip4vla.models.card import CardFacts
from clip4vla.models.checkpoints import model_card_facts
from clip4vla.models.clip4vla import CLIP4VLA

__all__ = ["run_card"]

log = logging.getLogger(__name__)


def run_card(config: RunConfig, task: Any, model: CLIP4VLA, split_sizes: dict[str, int], result: dict[str, Any],
             step: int, weights: str) -> CardFacts:
    """The :class:`CardFacts` of a finished run; ``result`` is its test result ({} without a test)."""
    tc, data = config.train, config.data
    card = tc.card
    corpora = {"training": data.corpus}
    if data.eval_corpus is not None and data.eval_corpus != data.corpus:
        corpora["evaluation"] = data.eval_corpus
    if data.corpus == "manifest":
        corpora["training"] = f"manifest ({_manifest_names(data.manifest.path)})"
    schedule = {"epochs": tc.epochs, **({"max steps": tc.max_steps} if tc.max_steps else {}),
                "global batch": tc.batch_size * tc.accum_steps, "precision": tc.precision,
                "learning rate": config.optim.lr, "seed": tc.seed}
    return model_card_facts(
        model, model.preprocessing, card.name or Path(tc.output_dir).name,
        license=card.license, description=card.description, tags=list(card.tags), datasets=list(card.datasets),
        task=task.name, step=step, weights=weights,
        started_from=f"`{config.model.init_from}`" if config.model.init_from else "random weights (no model.init_from)",
        corpora=corpora, clips=split_sizes, schedule=schedule, config_yaml=config_text(config),
        **_test_results(task, result),
    )


def _test_results(task: Any, result: dict[str, Any]) -> dict[str, Any]:
    """The test table and summary for the card. A card is words about the weights: a table that
    cannot be formatted costs the card its table, never the run its model folder."""
    if not result.get("metrics"):
        return {}
    try:
        return {"test_table": task.report(result), "test_summary": task.summary(result)}
    except (KeyError, TypeError, ValueError) as err:
        log.warning("the model card has no test table (%s: %s)", type(err).__name__, err)
        return {}


def _manifest_names(path: Any) -> str:
    paths = [path] if isinstance(path, str) else list(path)
    return ", ".join(Path(p).name for p in paths)
