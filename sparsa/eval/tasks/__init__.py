"""Long-context task suite: seeded generators ``(length_in_tokens, seed, tokenizer) -> instance``.

Each instance carries its parts (``context``, ``question``, ``answer_prefix``) and their
rendering ``prompt`` for the given tokenizer (chat template when it has one, see
:mod:`sparsa.eval.prompts`), which fills 90-100% of the requested length in that tokenizer's
tokens and ends with the answer prefix ("The special number for quiet-harbor is"; "Answer:" in
the legacy style of sparsa's own tokenizers). It comes with its reference answer and scorer::

    from sparsa.eval.tasks import generate, list_tasks
    inst = generate("niah_multikey", 4096, seed=0, tokenizer=tok)
    prompt, answer, scorer = inst
    scorer(" 4821937.")  # -> 1.0 or 0.0
    inst.scores(" 4821937.")  # {"score": ..., "exact": ...}

Tasks (``describe_tasks()`` prints what each tests):

=====================  =========================================================  ==============
name                   what it tests                                              metric
=====================  =========================================================  ==============
niah_single            retrieve one needle from source code                        exact
niah_multikey          one needle among many look-alike key-value distractors      exact
niah_multivalue        every value given for one key                               set F1
niah_multiquery        several needles asked in one question                       list accuracy
variable_tracking      chains of assignments, several hops                         set IoU
common_words           most frequent words of a long list (aggregation)            set F1
story_retrieval        a fact of a given chapter of a generated story              exact
story_multihop         two facts in different chapters, composed                   exact
story_filter           which chapters lack an event                                set IoU
doc_qa                 a question on one document among distractor documents       exact
=====================  =========================================================  ==============
"""
from __future__ import annotations

from typing import Any

from ..._registry import Registry
from .base import Task, TaskInstance, fit_to_length
from .common_words import CommonWords
from .documents import DocumentQA
from .needle import MultiKey, MultiQuery, MultiValue, SingleNeedle
from .story import StoryFilter, StoryMultiHop, StoryRetrieval
from .variables import VariableTracking

_TASKS: Registry[type[Task]] = Registry("task", "a task name (str)")


def register(cls: type[Task]) -> type[Task]:
    """Add a task class to the registry under ``cls.name``."""
    return _TASKS.register(cls)


for _cls in (SingleNeedle, MultiKey, MultiValue, MultiQuery, VariableTracking, CommonWords, StoryRetrieval,
             StoryMultiHop, StoryFilter, DocumentQA):
    register(_cls)


def list_tasks() -> list[str]:
    """Names of all registered tasks, in registration order."""
    return _TASKS.names()


def task_class(name: str) -> type[Task]:
    return _TASKS.get_class(name)


def get_task(name: str, **params: Any) -> Task:
    """The task registered as ``name``, with its parameters (e.g. ``distractors=8``) set."""
    return _TASKS.build(name, **params)


def generate(name: str, length: int, seed: int, tokenizer: Any, *, split: str = "eval", style: str | None = None,
             **params: Any) -> TaskInstance:
    """One instance of task ``name`` (see ``Task.generate``; ``style`` as in :mod:`sparsa.eval.prompts`)."""
    return get_task(name, **params).generate(length, seed, tokenizer, split=split, style=style)


def describe_tasks() -> dict[str, dict[str, Any]]:
    """name -> {description, metric, min_length} for every task."""
    return {n: {"description": c.description, "metric": c.metric, "min_length": c.min_length}
            for n, c in _TASKS.items()}


__all__ = ["Task", "TaskInstance", "describe_tasks", "fit_to_length", "generate", "get_task", "list_tasks",
           "register", "task_class"]
