"""Evaluation: retrieval metrics (captioning and classification live in sibling modules)."""

from clip4vla.evaluation.retrieval import format_metrics, retrieval_metrics, video_to_text_metrics

__all__ = ["format_metrics", "retrieval_metrics", "video_to_text_metrics"]
