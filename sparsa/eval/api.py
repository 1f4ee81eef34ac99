"""What the other apps (``sparsa.train``) take from evaluation: the task registry, the stdlib
corpus, the runner and its summaries, and the model loader. One entry, so their dependence on
``sparsa.eval`` stays in one place."""
from __future__ import annotations

from .corpus import check_file_paths, read_stdlib, stdlib_files
from .models import load_model
from .run import drop_partial_line, evaluate, half_score_length, read_rows, summarize
from .tasks import common_words, describe_tasks, documents, get_task, list_tasks, needle, story, variables
from .tasks.base import FitError
from .tasks.words import all_vocabulary


def task_templates() -> list[str]:
    """The template strings of the task generators (questions, headers, fact sentences, filler
    narration), generator by generator."""
    return [t for mod in (needle, variables, common_words, story, documents) for t in mod.TEMPLATES]


__all__ = ["FitError", "all_vocabulary", "check_file_paths", "describe_tasks", "drop_partial_line", "evaluate",
           "get_task", "half_score_length", "list_tasks", "load_model", "read_rows", "read_stdlib", "stdlib_files",
           "summarize", "task_templates"]
