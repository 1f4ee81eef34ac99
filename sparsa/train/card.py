"""The model card: what the model is, how it was trained, and its dense scores per task and length."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..eval.api import describe_tasks, evaluate, half_score_length, summarize

#: Dense-model targets at 4K tokens (the suite's acceptance bar for the shipped model).
TARGETS_4K = {"niah_single": 0.95, "niah_multikey": 0.85, "niah_multiquery": 0.80, "variable_tracking": 0.70}
#: A task whose 4K score is below this is listed as one the model cannot do.
CANNOT_DO = 0.2


def card_grid(tasks: Sequence[str], lengths: Sequence[int]) -> list[tuple[list[str], list[int]]]:
    """The card's evaluation grid: each task at the lengths of at least its minimum length, as
    (tasks, lengths) groups of the tasks evaluated at the same lengths (a task fitting none is left out)."""
    need = describe_tasks()
    groups: dict[tuple[int, ...], list[str]] = {}
    for task in tasks:
        fits = tuple(L for L in lengths if L >= need[task]["min_length"])
        if fits:
            groups.setdefault(fits, []).append(task)
    return [(names, list(fits)) for fits, names in groups.items()]


def evaluate_card(model: Any, tokenizer: Any, grid: Sequence[tuple[Sequence[str], Sequence[int]]], samples: int, *,
                  time_limit_s: float | None = None, **kw: Any) -> list[dict[str, Any]]:
    """Rows of the card's evaluation: :func:`sparsa.eval.api.evaluate` over each group of ``grid``
    (:func:`card_grid`), the time limit shared by all; ``kw`` go to every call."""
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for tasks, lengths in grid:
        left = None if time_limit_s is None else max(0.0, time_limit_s - (time.perf_counter() - t0))
        rows += evaluate(model, tokenizer, list(tasks), list(lengths), samples, time_limit_s=left, **kw)
    return rows


def scores_table(rows: Sequence[Mapping[str, Any]], reference: int = 4096) -> str:
    """Markdown table: task x length mean scores, the half-score length and the 4K target."""
    summary = summarize(rows)
    lengths = sorted({int(r["length"]) for r in rows})
    desc = describe_tasks()
    head = "| task | metric | " + " | ".join(_fmt_len(L) for L in lengths) + \
        f" | below half of {_fmt_len(reference)} score at | target at {_fmt_len(reference)} |"
    lines = [head, "|" + "---|" * (len(lengths) + 4)]
    for task, by_len in summary.items():
        ref = by_len.get(reference)
        half = half_score_length(by_len, reference)
        if ref is None:
            half_s = "n/a"
        elif ref < CANNOT_DO:
            half_s = "cannot do the task"
        else:
            half_s = _fmt_len(half) if half else f"not within {_fmt_len(max(lengths))}"
        tgt = TARGETS_4K.get(task)
        tgt_s = ""
        if tgt is not None:
            tgt_s = f">= {tgt:.2f} " + ("(not measured)" if ref is None else "(met)" if ref >= tgt else "(missed)")
        cells = " | ".join(f"{by_len[L]:.2f}" if L in by_len else "" for L in lengths)
        lines.append(f"| {task} | {desc[task]['metric']} | {cells} | {half_s} | {tgt_s} |")
    return "\n".join(lines)


def _fmt_len(L: int | None) -> str:
    if L is None:
        return ""
    return f"{L // 1024}K" if L % 1024 == 0 and L >= 1024 else str(L)


def model_card(name: str, *, recipe_text: str, recipe_file: str, params: Mapping[str, int],
               model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any], train_info: Mapping[str, Any],
               vocab_size: int, rows: Sequence[Mapping[str, Any]] | None, samples: int | None = None) -> str:
    """README.md text of the exported model."""
    m = model_cfg
    lens = [int(s[1]) for s in data_cfg["curriculum"]]
    default = (" It is sparsa's default model: it ships inside the package and loads offline."
               if name == "sparsa-tiny" else "")
    lang = "json" if recipe_text.lstrip().startswith("{") else "toml"  # a based recipe is saved resolved, as JSON
    nsa = m.get("attention", "dense") == "nsa"
    if nsa:
        g = m["nsa"]
        attention = (f"- Attention: trainable Native Sparse Attention in every layer (model type `sparsa_nsa`): "
                     f"compressed tokens of {g['block']} keys every {g['stride']}, {g['n_select']} selected "
                     f"blocks of {g['sel_block']}, a window of {g['window']}, {g['compress']} compression, "
                     "learned gates.")
        load = ("```python\nfrom sparsa.eval.models import load_model   # registers the sparsa_nsa architecture\n"
                "model, tok = load_model(path)   # path: this directory\n```\n")
    else:
        attention = "- Attention: dense (transformers' SDPA)."
        load = ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "model = AutoModelForCausalLM.from_pretrained(path)   # path: this directory\n"
                "tok = AutoTokenizer.from_pretrained(path)\n```\n")
    parts = [
        f"# {name}\n",
        "A small Llama-architecture decoder trained from scratch by `sparsa train` for sparsa's long-context "
        f"task suite.{default}\n",
        load,
        "## Model\n",
        f"- Llama architecture: {m['num_layers']} layers, hidden {m['hidden_size']}, {m['num_heads']} query heads / "
        f"{m['num_kv_heads']} KV heads of dimension {m['head_dim']} (GQA), SwiGLU {m['intermediate_size']}, "
        f"RoPE theta {m['rope_theta']:g}, tied embeddings.",
        attention,
        f"- Parameters: {params['total']:,} ({params['non_embedding']:,} without the embedding); "
        "weights stored in bfloat16.",
        f"- Tokenizer: byte-level BPE, {vocab_size} tokens, trained on the Python standard library's source "
        "(`sparsa.train.tokenizer`).\n",
        "## Training\n",
        "Language modelling on the standard library's source (\"train\" split of the files) mixed with "
        f"instances of sparsa's tasks (haystacks from the same split; {1 - data_cfg['lm_fraction']:.0%} of the "
        f"sequences), sequence length growing {' -> '.join(_fmt_len(L) for L in lens)} tokens. Answer tokens "
        f"weigh {data_cfg['answer_weight']:g} times a context token in the loss.\n",
    ]
    info = ", ".join(f"{k}: {v}" for k, v in train_info.items())
    parts.append(f"Run: {info}.\n")
    parts.append(f"Recipe (`{recipe_file}`; `sparsa train --recipe {recipe_file} --out DIR` reproduces the "
                 "model on the same Python version):\n")
    parts.append(f"```{lang}\n" + recipe_text.rstrip() + "\n```\n")
    parts.append("## Scores\n" if nsa else "## Dense scores\n")
    if rows:
        parts.append(f"Greedy decoding, {samples or '?'} instances per cell (eval split of the haystack files, "
                     "never seen in training). Scores in [0, 1].\n")
        parts.append(scores_table(rows) + "\n")
        summary = summarize(rows)
        cannot = [t for t, v in summary.items() if v.get(4096, 1.0) < CANNOT_DO]
        if cannot:
            parts.append("Tasks the model cannot do (4K score below "
                         f"{CANNOT_DO}): " + ", ".join(cannot) + ".\n")
    else:
        parts.append("Not evaluated yet.\n")
    return "\n".join(parts)
