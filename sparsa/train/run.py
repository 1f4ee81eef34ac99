"""`sparsa train`: train a recipe, export the HuggingFace directory, evaluate it for the model card.

Every stage can be interrupted and continued with ``resume=True``: training from its last
checkpoint, the card evaluation from its JSON-lines rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import load_recipe, recipe_suffix
from .loop import dist_env, estimate_flops, train
from .model import count_parameters


@dataclass
class RunResult:
    out_dir: Path
    step: int
    trained: bool
    model_dir: Path | None
    card_complete: bool
    message: str


def _display_path(p: Path) -> str:
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


def run(recipe: str | Path, out_dir: str | Path, *, resume: bool = False, max_steps: int | None = None,
        time_limit_s: float | None = None, device: str | None = None, card: bool = True,
        progress: bool = True) -> RunResult:
    """Train ``recipe`` into ``out_dir``; when training is complete, export ``out_dir/model`` and
    (``card=True``) evaluate it and write its model card."""
    t0 = time.perf_counter()
    if isinstance(out_dir, str) and not out_dir.strip():
        raise ValueError('--out: empty path; name a directory ("." for the current one)')
    recipe = Path(recipe)
    cfg, text = load_recipe(recipe)
    res = train(cfg, out_dir, recipe_text=text, recipe_suffix=recipe_suffix(text, recipe), resume=resume, max_steps=max_steps,
                time_limit_s=time_limit_s, device=device, progress=progress)
    rank, world, local = dist_env()
    try:
        return _finish(res, cfg, text, recipe, t0, time_limit_s, device, card, progress, rank, world, local)
    finally:
        if world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _finish(res, cfg, text: str, recipe: Path, t0: float, time_limit_s: float | None, device: str | None,
            card: bool, progress: bool, rank: int, world: int, local: int) -> RunResult:
    """Export the trained model and evaluate it for its card; with several processes (torchrun),
    process 0 exports and writes the card, every process evaluates a share of the cells."""
    out = Path(res.out_dir)
    if not res.finished:
        msg = f"stopped at step {res.step}/{cfg.steps} ({res.stopped_by}); continue with --resume"
        return RunResult(out, res.step, False, None, False, msg if rank == 0 else f"process {rank}: {msg}")

    import json

    import torch

    from ..eval.api import drop_partial_line, list_tasks, load_model, read_rows
    from .card import card_grid, evaluate_card, model_card
    from .export import export_hf

    def barrier() -> None:
        if world > 1:
            import torch.distributed as dist
            dist.barrier()

    model_dir = out / "model"
    rows_path = out / "card_eval.jsonl"
    if rank == 0:
        ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        vocab = res.tokenizer.get_vocab_size()
        fl = estimate_flops(cfg, vocab)
        train_info = {"steps": cfg.steps, "tokens": f"{fl['tokens'] / 1e6:.3g}M",
                      "training FLOPs": f"{fl['flops']:.2e}", "wall time": f"{ck['elapsed_s'] / 60:.1f} min",
                      "device": ", then ".join(ck.get("devices") or ["unrecorded"])}
        log = out / "log.jsonl"
        if log.exists():
            last = [json.loads(x) for x in log.read_text().splitlines() if '"loss"' in x]
            if last:
                train_info["final loss"] = f"{last[-1]['loss']:.3f}"
        card_kw = dict(recipe_text=text, recipe_file=_display_path(recipe), params=count_parameters(res.model),
                       model_cfg=cfg.to_dict()["model"], data_cfg=cfg.to_dict()["data"], train_info=train_info,
                       vocab_size=vocab)

        def write(rows):
            return export_hf(res.model, cfg.data.tokenizer, model_dir, rope_theta=cfg.model.rope_theta,
                             recipe_text=text, recipe_name=recipe.stem + recipe_suffix(text, recipe),
                             card=model_card(cfg.name, rows=rows, samples=cfg.card.samples, **card_kw))

        write(read_rows(rows_path) if rows_path.exists() else None)
        drop_partial_line(rows_path)
    barrier()  # the export exists before any process loads it
    if not card:
        msg = f"exported {model_dir} (no card evaluation)"
        return RunResult(out, res.step, True, model_dir, False, msg if rank == 0 else f"process {rank}: done")
    c = cfg.card
    if world > 1 and torch.cuda.is_available() and device in (None, "cuda"):
        device = f"cuda:{local}"
    model, tok = load_model(model_dir, device=device)
    left = None if time_limit_s is None else max(0.0, time_limit_s - (time.perf_counter() - t0))
    grid = card_grid(c.tasks or list_tasks(), cfg.card_lengths())
    kw = dict(seed=c.seed, out=rows_path, batch_size=c.batch_size)
    rows = evaluate_card(model, tok, grid, c.samples, progress=progress and rank == 0, time_limit_s=left,
                         shard=(rank, world) if world > 1 else None, **kw)
    barrier()  # every share is in the file
    if rank != 0:
        return RunResult(out, res.step, True, model_dir, False, f"process {rank}: evaluated its share")
    if world > 1:  # the rows all processes wrote (time limit 0: reads them, starts no new batch)
        rows = evaluate_card(model, tok, grid, c.samples, progress=False, time_limit_s=0.0, **kw)
    complete = len(rows) == sum(len(tasks) * len(lengths) for tasks, lengths in grid) * c.samples
    write(rows)
    msg = f"exported {model_dir}; model card " + ("complete" if complete else
                                                  "evaluation incomplete: continue with --resume")
    return RunResult(out, res.step, True, model_dir, complete, msg)
