"""Evaluation: the long-context task suite, scorers and a resumable runner.

``sparsa.eval.tasks`` holds the generators (needle retrieval, variable tracking, common words,
story and document tasks); ``sparsa.eval.run.evaluate`` runs them on a model.
"""
from __future__ import annotations

from .models import load_model
from .run import evaluate
from .scoring import METRICS, Scorer
from .tasks import TaskInstance, describe_tasks, generate, get_task, list_tasks

__all__ = ["METRICS", "Scorer", "TaskInstance", "describe_tasks", "evaluate", "generate", "get_task",
           "list_tasks", "load_model"]
