"""Evaluation: the long-context task suite, scorers and a resumable runner.

``sparsa.eval.tasks`` holds the generators (needle retrieval, variable tracking, common words,
story and document tasks); ``sparsa.eval.run.evaluate`` runs them on a model.
"""
from __future__ import annotations

from typing import Any

from .scoring import METRICS, Scorer
from .tasks import TaskInstance, describe_tasks, generate, get_task, list_tasks


def evaluate(*args: Any, **kwargs: Any):
    """See ``sparsa.eval.run.evaluate``."""
    from .run import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def load_model(name_or_path: str | None = None, **kwargs: Any):
    """See ``sparsa.eval.models.load_model``."""
    from .models import load_model as _load

    return _load(name_or_path, **kwargs)


__all__ = ["METRICS", "Scorer", "TaskInstance", "describe_tasks", "evaluate", "generate", "get_task",
           "list_tasks", "load_model"]
