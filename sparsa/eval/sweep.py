"""The frontier sweep: methods x compression targets x context lengths x tasks x samples.

Every cell is one (task, length, method, phase, target, mode). Dense cells (method "dense")
are the paired baseline of every other cell on the same samples. Results go to
``OUT/rows.rank<R>.jsonl`` as samples finish (one JSON object per line, flushed and synced
per batch), with the sweep's configuration in ``OUT/config.json``; rerunning the same
command continues where an interrupted run stopped. Under ``torchrun`` each rank takes its
share of the cells (dealt by work, the same on every rank) and writes its own file;
:mod:`sparsa.eval.report` merges them.

Row fields: model, task, length, sample, seed, n_tokens, method, phase ("prefill", "decode" or
"dense"), target (compression asked for; None for dense or a method's own defaults),
compression (achieved, model-wide, from the methods' own stats), mode ("aware" or
"agnostic"), metric, answer, prediction, score (partial credit), exact (0/1), seconds.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._validation import check_device, check_dir_path, check_duration, check_writable_dir
from ..methods.registry import get_method, list_methods, method_class
from ..patterns import load_head_patterns, read_patterns
from .greedy import MODES, Prompt, greedy_generate
from .models import load_model, model_context_length
from .prompts import split_prompt_ids
from .metrics import cell_key, dedupe_rows, read_jsonl
from .run import drop_partial_line, instance_seed
from .tasks import get_task, list_tasks
from .tokenization import TokenCounter, special_ids

RETRIEVAL_TASKS = ("niah_single", "niah_multikey", "niah_multiquery", "variable_tracking")
DEFAULT_COMPRESSIONS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
CONFIG_FILE = "config.json"
# fields that change what a row means: a resumed sweep must keep them
_IDENTITY = ("model", "seed", "split", "prompt_style")


@dataclass(frozen=True)
class Cell:
    """One cell of the grid; ``target`` None = the method's own defaults (or dense)."""

    task: str
    length: int
    method: str
    phase: str
    target: float | None
    mode: str

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.task, self.length, self.method, self.phase, self.target, self.mode)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """(task, length, method, phase, target, mode, sample) of a result row: its cell without the
    model (one sweep directory holds one model) and its sample."""
    return (*cell_key(row)[1:], int(row["sample"]))


@dataclass
class SweepConfig:
    """What to sweep. Lengths are prompt lengths in tokens; compressions are targets (>= 1)."""

    model: str = "sparsa-tiny"
    methods: list[str] = field(default_factory=list)
    compressions: list[float] = field(default_factory=lambda: list(DEFAULT_COMPRESSIONS))
    lengths: list[int] = field(default_factory=lambda: [4096])
    tasks: list[str] = field(default_factory=lambda: list(RETRIEVAL_TASKS))
    samples: int = 10
    seed: int = 0
    modes: list[str] = field(default_factory=lambda: ["aware"])
    batch_size: int = 8
    patterns: list[str] = field(default_factory=list)
    split: str = "eval"
    prompt_style: str = "auto"

    def __post_init__(self) -> None:
        # a value given twice is one cell, not two runs of it
        for name in ("methods", "lengths", "tasks", "modes"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, list(dict.fromkeys(value)))
        known = [m for m in list_methods() if m != "dense"]
        if not self.methods:
            self.methods = list(known)
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"methods: unknown {bad}; choose from {known} (dense is always run as the baseline)")
        if not self.compressions or any(not isinstance(c, (int, float)) or not math.isfinite(c) or c < 1
                                        for c in self.compressions):
            raise ValueError(f"compressions: every target must be a finite number >= 1, got {self.compressions}")
        self.compressions = sorted({float(c) for c in self.compressions})
        if not self.lengths or any(isinstance(x, bool) or not isinstance(x, int) or x < 64 for x in self.lengths):
            raise ValueError(f"lengths: prompt lengths must be ints >= 64, got {self.lengths}")
        bad = [t for t in self.tasks if t not in list_tasks()]
        if not self.tasks or bad:
            raise ValueError(f"tasks: unknown {bad or self.tasks}; choose from {list_tasks()}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples: must be an int >= 1, got {self.samples!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: must be an int >= 1, got {self.batch_size!r}")
        bad = [m for m in self.modes if m not in MODES]
        if not self.modes or bad:
            raise ValueError(f"modes: choose from {MODES}, got {self.modes}")
        stems: dict[str, str] = {}
        for p in dict.fromkeys(str(p) for p in self.patterns):
            if not Path(p).is_file():
                raise FileNotFoundError(f"patterns: no pattern file at {p}")
            try:
                load_head_patterns(p)       # reads the file and checks every head's method and parameters
            except (ValueError, TypeError) as e:
                raise ValueError(f"patterns: {p}: {str(e).removeprefix('path: ')}") from None
            stem = Path(p).stem
            if stem in stems:
                raise ValueError(f"patterns: {stems[stem]} and {p} have the same name {stem!r}, which names "
                                 "their method in the results; rename one of them")
            stems[stem] = p
        self.patterns = list(stems.values())

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cells(config: SweepConfig) -> list[Cell]:
    """The grid in run order: retrieval tasks first, then by length, task, mode, method, target.

    Methods of phase "both" (streaming, nsa) get a prefill cell and a decode cell per target.
    """
    task_order = sorted(config.tasks, key=lambda t: (t not in RETRIEVAL_TASKS, config.tasks.index(t)))
    out: list[Cell] = []
    for group in (True, False):
        for L in config.lengths:
            for t in task_order:
                if (t in RETRIEVAL_TASKS) != group:
                    continue
                for mode in config.modes:
                    out.append(Cell(t, L, "dense", "dense", None, mode))
                    for m in config.methods:
                        phase = method_class(m).phase
                        phases = ("prefill", "decode") if phase == "both" else (phase,)
                        for ph in phases:
                            for c in config.compressions:
                                out.append(Cell(t, L, m, ph, c, mode))
                    for p in config.patterns:
                        c = read_patterns(p).get("compression")
                        out.append(Cell(t, L, f"patterns:{Path(p).stem}", "prefill",
                                        None if c is None else float(c), mode))
    return out


def shard(grid: Sequence[Cell], samples: int, rank: int, world: int) -> list[Cell]:
    """The cells rank ``rank`` of ``world`` runs: dealt by work (~ length), in grid order."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank: must be in [0, {world}), got {rank}")
    load = [0] * world
    owner: dict[int, int] = {}
    for i in sorted(range(len(grid)), key=lambda i: (-grid[i].length, i)):
        j = min(range(world), key=lambda k: (load[k], k))
        load[j] += grid[i].length * samples
        owner[i] = j
    return [c for i, c in enumerate(grid) if owner[i] == rank]


# ------------------------------------------------------------------------------------- result files

def rows_path(out_dir: str | Path, rank: int) -> Path:
    return Path(out_dir) / f"rows.rank{rank}.jsonl"


def read_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of every ``rows.*.jsonl`` in ``out_dir``, read and deduplicated as the report
    reads them (:func:`~sparsa.eval.metrics.read_jsonl`: a torn last line is skipped with a
    warning, a corrupt line elsewhere raises ``ValueError`` naming file and line). Later rows of
    the same (cell, sample) replace earlier ones."""
    d = Path(out_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"out: no results directory at {d}")
    return dedupe_rows(r for f in sorted(d.glob("rows.*.jsonl")) for r in read_jsonl(f))


def _merged_config(out_dir: Path, config: SweepConfig) -> dict[str, Any]:
    """The configuration to save: ``config`` merged with the one a continued sweep saved before.

    ``ValueError`` naming ``out`` when that one is unreadable or belongs to another sweep
    (another model, seed, split or prompt style)."""
    path = out_dir / CONFIG_FILE
    new = config.to_json()
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"out: {path} is not valid JSON; move it away or choose another --out") from None
        if not isinstance(old, dict) or not {"model", "seed", "methods"} <= old.keys():
            raise ValueError(f"out: {path} is not a sweep configuration (a JSON object with model, seed, "
                             "methods, ...); move it away or choose another --out")
        diff = [k for k in _IDENTITY if old.get(k) != new.get(k)]
        if diff:
            raise ValueError(f"out: {out_dir} holds a sweep with other {', '.join(diff)} "
                             f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); choose another --out")
        for k in ("methods", "lengths", "tasks", "modes", "patterns"):
            new[k] = list(dict.fromkeys(list(old.get(k, [])) + list(new[k])))
        new["compressions"] = sorted(set(old.get("compressions", [])) | set(new["compressions"]))
        new["samples"] = max(int(old.get("samples", 0)), new["samples"])
    return new


def _check_rows(out_dir: Path, config: SweepConfig, rows: list[dict[str, Any]]) -> None:
    """Refuse to continue rows that this sweep did not write: rows without a saved configuration
    (what they measured is unknown), or of another model or seed (they would count as done)."""
    if not rows:
        return
    if not (out_dir / CONFIG_FILE).exists():
        raise ValueError(f"out: {out_dir} holds result rows but no {CONFIG_FILE}, so it is unknown which model "
                         "and seed they measured; choose another --out")
    label = model_label(config.model)
    for r in rows:
        if r.get("model") != label:
            raise ValueError(f"out: {out_dir} holds rows of model {r.get('model')!r}, not {label!r}; "
                             "choose another --out")
        s = r.get("sample")
        if isinstance(s, int) and r.get("seed") != instance_seed(config.seed, s):
            raise ValueError(f"out: {out_dir} holds rows of another --seed (sample {s} was generated with "
                             f"seed {r.get('seed')!r}, --seed {config.seed} gives {instance_seed(config.seed, s)}); "
                             "choose another --out")


def _write_config(out_dir: Path, config: SweepConfig) -> None:
    path = out_dir / CONFIG_FILE
    new = _merged_config(out_dir, config)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ runner

@dataclass
class SweepResult:
    out_dir: Path
    rows_written: int
    rows_total: int
    seconds: float
    finished: bool
    failed_cells: int = 0


def _build(cell: Cell) -> tuple[Any, Any]:
    """(prefill, decode) method objects for ``sparsa.apply``; (None, None) for dense."""
    if cell.method == "dense":
        return None, None
    params = {} if cell.target is None else {"compression": cell.target}
    m = get_method(cell.method, **params)
    return (m, None) if cell.phase == "prefill" else (None, m)


def _apply(model: Any, cell: Cell, patterns: dict[str, str]) -> Any:
    from ..integrations.hf.apply import apply  # local: loads transformers

    if cell.method.startswith("patterns:"):
        return apply(model, prefill=None, decode=None, layers=load_head_patterns(patterns[cell.method]))
    prefill, decode = _build(cell)
    if prefill is None and decode is None:
        return None
    return apply(model, prefill=prefill, decode=decode)


def run_sweep(config: SweepConfig, out_dir: str | Path, *, model: Any = None, tokenizer: Any = None,
              device: str | None = None, rank: int | None = None, world: int | None = None,
              progress: bool = True, time_limit_s: float | None = None) -> SweepResult:
    """Run (or continue) the sweep; returns what this process wrote.

    model/tokenizer: an already loaded pair (default: ``load_model(config.model)``).
    rank/world: this process's share (default: ``RANK`` / ``WORLD_SIZE`` from torchrun, else 0/1).
    time_limit_s: start no new batch after this many seconds (a later call continues).
    """

    t_start = time.perf_counter()
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    out = check_dir_path("out", out_dir)
    if device is not None:
        check_device("device", device)
    if time_limit_s is not None:
        check_duration("time_limit_s", time_limit_s)
    _merged_config(out, config)  # another sweep's directory is refused before the model loads
    previous = read_results(out) if out.is_dir() and any(out.glob("rows.*.jsonl")) else []
    _check_rows(out, config, previous)
    if model is None:

        if device is None and torch.cuda.is_available() and world > 1:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
        model, tokenizer = load_model(config.model, device=device)
    elif tokenizer is None:
        raise ValueError("tokenizer: pass the model's tokenizer with model")
    _check_lengths(model, config.lengths)
    _check_patterns_fit(model, config.patterns)
    check_writable_dir("out", out)
    if rank == 0:
        _write_config(out, config)

    grid = cells(config)
    if getattr(getattr(model, "config", None), "model_type", None) == "sparsa_nsa":
        # natively sparse: its own attention is the model's baseline; no method replaces it
        if any(c.method != "dense" for c in grid) and rank == 0:
            warnings.warn("methods: the model's attention is trained Native Sparse Attention; only its own "
                          "attention (the 'dense' rows) is evaluated", stacklevel=2)
        grid = [c for c in grid if c.method == "dense"]
    grid = shard(grid, config.samples, rank, world)
    done = {row_key(r) for r in previous}
    todo = [(c, s) for c in grid for s in range(config.samples) if (*c.key, s) not in done]
    total = len(grid) * config.samples
    patterns = {f"patterns:{Path(p).stem}": p for p in config.patterns}
    tasks = {t: get_task(t) for t in config.tasks}
    ids = special_ids(tokenizer)
    eos, pad = ids["eos"], ids["pad"] if ids["pad"] is not None else (ids["eos"] or 0)
    counter = TokenCounter(tokenizer)

    style = None if config.prompt_style == "auto" else config.prompt_style

    def stop(gen: list[int]) -> bool:
        return answer_line_done(counter.decode(gen))

    # every cell of a (task, length) asks for the same samples: render each one once (the grid
    # runs cell groups of one task and length together, so one group is kept at a time)
    rendered: dict[tuple[str, int, int], tuple[Any, Prompt]] = {}

    def instance(task: str, length: int, s: int) -> tuple[Any, Prompt]:
        key = (task, length, s)
        if key not in rendered:
            if any(k[:2] != key[:2] for k in rendered):
                rendered.clear()
            x = tasks[task].generate(length, instance_seed(config.seed, s), tokenizer, split=config.split)
            rendered[key] = (x, Prompt(*split_prompt_ids(tokenizer, x, style=style)))
        return rendered[key]

    def run_batch(cell: Cell, chunk: list[int], handle: Any) -> list[str]:
        """JSON lines of one batch; a batch that runs out of GPU memory is split in halves."""
        insts, prompts = map(list, zip(*(instance(cell.task, cell.length, s) for s in chunk)))
        t0 = time.perf_counter()
        try:
            res = greedy_generate(model, prompts, max_new_tokens=max(x.max_new_tokens for x in insts),
                                  mode=cell.mode, decode_phase=cell.phase == "decode", handle=handle,
                                  eos_id=eos, pad_id=pad, stop=stop)
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(chunk) // 2
            return run_batch(cell, chunk[:half], handle) + run_batch(cell, chunk[half:], handle)
        dt = (time.perf_counter() - t0) / len(insts)
        achieved = _achieved(cell, res)
        lines = []
        for s, x, p, g in zip(chunk, insts, prompts, res.ids):
            pred = counter.decode(g)
            lines.append(json.dumps({
                "model": model_label(config.model), "task": cell.task, "length": cell.length, "sample": s, "seed": x.seed,
                "n_tokens": len(p.ids), "method": cell.method, "phase": cell.phase, "target": cell.target,
                "compression": achieved, "mode": cell.mode, "metric": x.metric, "answer": x.answer_text,
                "prediction": pred, "score": float(x.score(pred)), "exact": int(_exact(x, pred)),
                "seconds": round(dt, 4)}) + "\n")
        return lines

    path = rows_path(out, rank)
    drop_partial_line(path)
    bar = tqdm(total=total, initial=total - len(todo), desc=f"eval r{rank}" if world > 1 else "eval",
               unit="ex", disable=not progress, dynamic_ncols=True)
    written = failed = 0
    stopped = False
    by_cell: dict[Cell, list[int]] = {}
    for c, s in todo:
        by_cell.setdefault(c, []).append(s)
    try:
        with open(path, "a") as fh:
            for cell, samples in by_cell.items():
                if stopped:
                    break
                bar.set_postfix_str(f"{cell.task} {cell.length} {cell.method}/{cell.phase} c={cell.target} "
                                    f"{cell.mode}", refresh=False)
                try:
                    handle = _apply(model, cell, patterns)
                except (ValueError, TypeError) as e:
                    _record_error(out, rank, cell, e)
                    failed += 1
                    bar.update(len(samples))
                    continue
                try:
                    step = 1 if cell.mode == "agnostic" else config.batch_size
                    for i in range(0, len(samples), step):
                        if time_limit_s is not None and time.perf_counter() - t_start >= time_limit_s:
                            stopped = True
                            break
                        chunk = samples[i:i + step]
                        try:
                            lines = run_batch(cell, chunk, handle)
                        except Exception as e:  # noqa: BLE001 - one failing cell must not end the sweep
                            _record_error(out, rank, cell, e)
                            failed += 1
                            bar.update(len(samples) - i)
                            break
                        fh.write("".join(lines))
                        fh.flush()
                        os.fsync(fh.fileno())
                        written += len(lines)
                        bar.update(len(lines))
                finally:
                    if handle is not None:
                        handle.remove()
    finally:
        bar.close()
    return SweepResult(out, written, total, time.perf_counter() - t_start, finished=not stopped, failed_cells=failed)


def model_label(model: str) -> str:
    """The name rows carry for a model: a file's or directory's name without suffix, else the id as given."""
    p = Path(model)
    return p.stem if p.suffix == ".gguf" or p.is_absolute() or p.exists() else model


def _record_error(out: Path, rank: int, cell: Cell, exc: BaseException) -> None:
    """Log a cell that could not run to ``errors.rank<R>.jsonl`` and warn; the sweep goes on."""
    msg = f"{type(exc).__name__}: {exc}"[:2000]
    warnings.warn(f"cell {cell} failed and is skipped: {msg}", stacklevel=2)
    with open(out / f"errors.rank{rank}.jsonl", "a") as fh:
        fh.write(json.dumps({**dataclasses.asdict(cell), "error": msg}) + "\n")


def answer_line_done(text: str) -> bool:
    """True once more generated text can no longer change what the scorer reads.

    The scorer (:func:`~sparsa.eval.scoring.answer_text`) reads the first non-empty line, and
    when that line ends with ":" the list lines after it up to a blank line. So a single-line
    answer is done once its line is finished (followed by a newline), and a list once a blank
    line follows at least one item.
    """
    lines = text.split("\n")
    finished = lines[:-1]
    for i, line in enumerate(finished):
        if line.strip():
            break
    else:
        return False
    if not finished[i].rstrip().endswith(":"):
        return True
    seen_item = False
    for line in lines[i + 1:-1]:
        if line.strip():
            seen_item = True
        elif seen_item:
            return True
    return False


def _exact(inst: Any, prediction: str) -> bool:
    """All-or-nothing correctness of a prediction."""
    fn = getattr(inst, "exact", None)
    if callable(fn):
        return bool(fn(prediction))
    return inst.score(prediction) >= 1.0


def _achieved(cell: Cell, res: Any) -> float | None:
    """Model-wide achieved compression of the cell's phase (1.0 for dense)."""
    if cell.method == "dense":
        return 1.0
    work = res.prefill if cell.phase == "prefill" else res.decode
    if work is None:
        return None
    dense, computed = work
    return float("inf") if computed <= 0 else round(dense / computed, 4)


def _check_patterns_fit(model: Any, paths: Sequence[str]) -> None:
    """Refuse a pattern file whose layers or head counts do not fit ``model`` (before any cell runs)."""
    from ..integrations.hf.apply import apply  # local: loads transformers

    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    for p in paths:
        layers = load_head_patterns(p)
        for key, per_head in layers.items():
            if isinstance(heads, int) and len(per_head.heads) != heads:
                raise ValueError(f"patterns: {p}: layer {key} has {len(per_head.heads)} head entries; the model "
                                 f"has {heads} query heads")
        try:
            apply(model, prefill=None, decode=None, layers=layers).remove()
        except (ValueError, TypeError) as e:
            raise ValueError(f"patterns: {p}: {e}") from None


def _check_lengths(model: Any, lengths: Sequence[int]) -> None:
    ctx = model_context_length(model)
    if ctx is not None:
        long = [x for x in lengths if x > ctx]
        if long:
            raise ValueError(f"lengths: {long} exceed the model's context of {ctx} tokens")
