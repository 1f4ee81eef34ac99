"""The `sparsa` command line."""
from __future__ import annotations

import json
import platform

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="sparsa: sparse attention for long-context LLMs.")


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Version, device, available kernels and methods."""
    import torch

    from . import __version__
    from .backend import triton_available
    from .methods.registry import list_methods, method_class
    from .ops import kernel_note, kernel_status

    cuda = torch.cuda.is_available()
    data = {
        "sparsa": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "triton": _version("triton") if triton_available() else None,
        "kernels": kernel_status(),
        "kernels_note": kernel_note(),
        "methods": {n: method_class(n).phase for n in list_methods()},
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"sparsa {data['sparsa']}  (python {data['python']}, torch {data['torch']}, triton {data['triton']})")
    typer.echo(f"device: {data['device']}")
    if data["kernels_note"]:
        typer.echo(f"kernels: none usable here: {data['kernels_note']}")
    else:
        slow = "" if cuda else "  (TRITON_INTERPRET=1: the Triton interpreter on the CPU, slow)"
        typer.echo("kernels: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in data["kernels"].items()) + slow)
    typer.echo("methods:")
    for n, phase in data["methods"].items():
        typer.echo(f"  {n:<16}{phase:<8}{method_class(n).paper}")


def _fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; the caller raises the returned exit (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _check_device_option(device: str | None) -> None:
    """Reject a --device this machine cannot run (e.g. cuda with a CPU-only torch) before any work."""
    from ._validation import check_device

    if device is not None:
        try:
            check_device("--device", device)
        except ValueError as e:
            raise _fail(str(e)) from None


def _needs_cuda(command: str, args: list[str]) -> None:
    """Exit with a message when a GPU-only command runs without CUDA (its --help still works)."""
    import torch

    if not torch.cuda.is_available() and not {"--help", "-h"} & set(args):
        raise _fail(f"`sparsa {command}` needs a CUDA GPU; torch {torch.__version__} sees none here")


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


@app.command()
def demo(
    length: int = typer.Option(8192, min=256, help="Context length in tokens."),
    heads: int = typer.Option(8, min=1, help="Query heads."),
    kv_heads: int = typer.Option(2, min=1, help="KV heads (must divide heads)."),
    head_dim: int = typer.Option(64, min=8, help="Head dimension."),
    compression: float = typer.Option(10.0, min=1.0, help="Target compression for every method."),
    method: list[str] = typer.Option(None, "--method", "-m", help="Only these methods (repeatable)."),
    seed: int = typer.Option(0, help="Seed of the synthetic input."),
) -> None:
    """Run every method on a long synthetic input on the CPU: achieved compression, error vs dense, time."""
    from .demo import format_rows, run_demo
    from .methods.registry import method_class

    if heads % kv_heads:
        raise typer.BadParameter(f"kv_heads ({kv_heads}) must divide heads ({heads})", param_hint="--kv-heads")
    for m in method or []:
        try:
            method_class(m)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--method") from None
    rows = run_demo(length=length, heads=heads, kv_heads=kv_heads, head_dim=head_dim, compression=compression,
                    seed=seed, methods=list(method) if method else None)
    typer.echo(format_rows(rows))


@app.command()
def train(
    recipe: str = typer.Option(..., "--recipe", help="Recipe file (.toml or .json), e.g. recipes/sparsa-tiny.toml."),
    out: str = typer.Option(..., "--out", help="Output directory (checkpoint, log, exported model)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps in this call."),
    time_limit: float = typer.Option(None, "--time-limit", min=0.0,
                                     help="Minutes; checkpoint and stop once a step ends after this."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)."),
    card: bool = typer.Option(True, "--card/--no-card", help="Evaluate the exported model for its model card."),
) -> None:
    """Train a model from a recipe (resumable), export it as a HuggingFace directory with its model card."""
    from ._validation import check_writable_dir
    from .train.run import run

    _check_device_option(device)
    try:
        check_writable_dir("--out", out)
    except ValueError as e:
        raise _fail(str(e)) from None
    try:
        res = run(recipe, out, resume=resume, max_steps=max_steps,
                  time_limit_s=None if time_limit is None else 60.0 * time_limit, device=device, card=card)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(res.message)


@app.command("search-patterns")
def search_patterns(
    out: str = typer.Option(..., "--out", help="Pattern file to write (JSON)."),
    model: str = typer.Option(None, "--model", help="HuggingFace model directory (default: the embedded sparsa-tiny)."),
    compression: float = typer.Option(10.0, "--compression", min=1.0, help="Prefill target every candidate runs at."),
    candidate: list[str] = typer.Option(None, "--candidate", "-c",
                                        help="Candidate methods (repeatable; default streaming vertical_slash "
                                             "block_sparse)."),
    task: str = typer.Option("niah_multikey", "--task", help="Task whose instance is the calibration prompt."),
    length: int = typer.Option(4096, "--length", min=64, help="Calibration prompt length in tokens."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration instance."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if present)."),
) -> None:
    """Assign each attention head the candidate pattern closest to dense attention (MInference-style offline search).

    Use the file with ``sparsa.apply(model, layers=sparsa.patterns.load_head_patterns(FILE))``.
    """
    from .eval.models import load_model, resolve_model_path
    from .eval.tasks import generate, list_tasks
    from .integrations.hf.search import search_head_patterns
    from .methods.registry import method_class
    from .patterns import DEFAULT_CANDIDATES, summary, write_patterns

    names = list(candidate) if candidate else list(DEFAULT_CANDIDATES)
    for n in names:
        try:
            phase = method_class(n).phase
        except ValueError as e:
            raise _fail(f"--candidate: {e}") from None
        if n == "dense":
            raise _fail("--candidate: dense is the reference every candidate is compared with, not a candidate; "
                        f"choose sparse prefill methods, e.g. {' '.join(DEFAULT_CANDIDATES)}")
        if phase == "decode":
            raise _fail(f"--candidate: {n} is a decode method; candidates must be sparse prefill methods")
    _check_device_option(device)
    if task not in list_tasks():
        raise typer.BadParameter(f"{task!r}: choose from {list_tasks()}", param_hint="--task")
    try:
        path = resolve_model_path(model)
        lm, tok = load_model(path, device=device)
        inst = generate(task, length, seed, tok, split="train")
        ids = tok(inst.prompt, return_tensors="pt").input_ids
        layers, specs = search_head_patterns(lm, ids, compression=compression, candidates=names)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    calib = {"model": str(model or "sparsa-tiny"), "task": task, "length": length, "tokens": int(ids.shape[1]),
             "seed": seed}
    write_patterns(out, layers, compression=compression, candidates=specs, calibration=calib)
    counts = summary(layers)
    typer.echo(f"wrote {out}: {len(layers)} layers; heads per method: "
               + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


bench_app = typer.Typer(no_args_is_help=True, help="GPU benchmarks against dense attention (results as JSON).")
app.add_typer(bench_app, name="bench")


def _floats(values: list[str] | None) -> list[float | None] | None:
    if not values:
        return None
    out: list[float | None] = []
    for v in values:
        if v.lower() in ("paper", "none"):
            out.append(None)
            continue
        try:
            out.append(float(v))
        except ValueError:
            raise typer.BadParameter(f"{v!r} is not a number or 'paper'", param_hint="--compression") from None
    return out


@bench_app.command("prefill")
def bench_prefill(
    context: list[int] = typer.Option([65536, 131072], "--context", "-n", help="Context lengths (repeatable)."),
    method: list[str] = typer.Option(["block_sparse", "vertical_slash"], "--method", "-m",
                                     help="Prefill methods to time (repeatable): block_sparse, vertical_slash, "
                                          "flexprefill, sliding_window, streaming, bigbird."),
    compression: list[str] = typer.Option(["10", "paper"], "--compression", "-c",
                                          help="Targets; 'paper' = vertical-slash's 1000 + 6096 lines."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare with the reference at real size first."),
    out: str = typer.Option("benchmarks/results/prefill.json", "--out", help="Results JSON (appended row by row)."),
    detail: bool = typer.Option(True, "--detail/--no-detail",
                                help="Also the profiling rows (kernel variants, scattered lines, torch conversion)."),
    baseline: list[str] = typer.Option(["sdpa_cudnn", "sdpa_flash", "flex"], "--baseline", "-b",
                                       help="Dense baselines to time (repeatable): sdpa_cudnn, sdpa_flash, flex."),
    resume: bool = typer.Option(False, "--resume", help="Skip the cells whose end-to-end row is already in --out."),
) -> None:
    """Sparse prefill kernels vs SDPA cuDNN / FLASH / FlexAttention on this GPU (Llama-3-8B attention shape)."""
    import torch

    if not torch.cuda.is_available():
        typer.echo("error: `sparsa bench` needs a CUDA GPU", err=True)
        raise typer.Exit(2)
    from .bench.prefill import run_prefill_bench

    run_prefill_bench(context, method, _floats(compression) or [None], check, out, baselines=baseline, detail=detail,
                      resume=resume)


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@bench_app.command("decode", context_settings=_PASS_THROUGH)
def bench_decode(ctx: typer.Context) -> None:
    """Decode methods on their compact caches vs dense decode (options: `sparsa bench decode --help`)."""
    _needs_cuda("bench decode", list(ctx.args))
    from .bench.decode import main

    main(list(ctx.args))


@bench_app.command("nsa", context_settings=_PASS_THROUGH)
def bench_nsa(ctx: typer.Context) -> None:
    """NSA kernels (forward, backward, decode) vs SDPA cuDNN / FA2 (options: `sparsa bench nsa --help`)."""
    _needs_cuda("bench nsa", list(ctx.args))
    from .bench.nsa import main

    main(list(ctx.args))


@bench_app.command("e2e")
def bench_e2e(
    phase: str = typer.Option("prefill", "--phase", help="prefill (sparse prefill methods) or decode (decode "
                                                          "methods on their compact caches, tokens/s)."),
    context: list[int] = typer.Option(None, "--context", "-n",
                                      help="Prompt lengths (repeatable; default 32768 131072, decode: 65536)."),
    method: list[str] = typer.Option(None, "--method", "-m",
                                     help="Methods (repeatable; default vertical_slash, decode: full_cache quest "
                                          "snapkv h2o streaming)."),
    compression: float = typer.Option(None, "--compression", min=1.0,
                                      help="Prefill target (default: the paper budgets)."),
    layers: int = typer.Option(None, "--layers", min=1,
                               help="Decoder layers of the Llama-3-8B-shaped model (default 32, decode: 4)."),
    reps: int = typer.Option(2, "--reps", min=1, help="Prefill: timed passes per configuration (after one warm-up)."),
    batch: int = typer.Option(16, "--batch", min=1, help="Decode: sequences per step."),
    steps: int = typer.Option(32, "--steps", min=1, help="Decode: timed steps per configuration."),
    warmup: int = typer.Option(4, "--warmup", min=1, help="Decode: untimed steps first."),
    out: str = typer.Option("benchmarks/results/e2e.json", "--out", help="Results JSON (appended row by row)."),
) -> None:
    """End-to-end prefill or decode of a Llama-3-8B-shaped model (random weights): dense SDPA vs sparsa.apply."""
    import torch

    if phase not in ("prefill", "decode"):
        raise typer.BadParameter(f"{phase!r}: must be prefill or decode", param_hint="--phase")
    if not torch.cuda.is_available():
        typer.echo("error: `sparsa bench` needs a CUDA GPU", err=True)
        raise typer.Exit(2)
    if phase == "decode":
        from .bench.e2e import DECODE_METHODS, run_e2e_decode_bench

        bad = [m for m in method or [] if m not in DECODE_METHODS]
        if bad:
            raise typer.BadParameter(f"{bad}: choose from {list(DECODE_METHODS)}", param_hint="--method")
        for n in context or [65536]:
            run_e2e_decode_bench(out, context=n, batch=batch, layers=layers or 4, steps=steps, warmup=warmup,
                                 methods=list(method) if method else None)
        return
    from .bench.e2e import run_e2e_bench

    run_e2e_bench(context or [32768, 131072], method or ["vertical_slash"], out, layers=layers or 32, reps=reps,
                  compression=compression)


if __name__ == "__main__":  # pragma: no cover
    app()
