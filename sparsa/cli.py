"""The `sparsa` command line.

Commands import what they use inside their own bodies (torch, the methods, the apps), so that
``sparsa --help`` and the parsing of arguments stay fast."""
from __future__ import annotations

import json
import platform

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="sparsa: sparse attention for long-context LLMs.")


def _format_warning(message, category, filename, lineno, line=None) -> str:  # type: ignore[no-untyped-def]
    return f"warning: {message}\n"


@app.callback()
def _setup() -> None:
    # warnings reach a command-line user as one line, not with the library's source line
    import warnings

    warnings.formatwarning = _format_warning


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Version, device, the Triton kernels usable here, and the methods."""
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
    from .demo import check_demo_size, format_rows, run_demo
    from .methods.registry import method_class

    import math

    if heads % kv_heads:
        raise _fail(f"--kv-heads: {kv_heads} must divide --heads ({heads})")
    if not math.isfinite(compression):
        raise _fail(f"--compression: must be a finite number >= 1, got {compression}")
    for m in method or []:
        try:
            method_class(m)
        except ValueError as e:
            raise _fail(f"--method: {str(e).removeprefix('method: ')}") from None
    try:
        check_demo_size(length, heads, kv_heads, head_dim)
    except ValueError as e:
        raise _fail(_option_message(e, DEMO_OPTIONS)) from None
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
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(res.message)


@app.command("search-patterns")
def search_patterns(
    out: str = typer.Option(..., "--out", help="Pattern file to write (JSON)."),
    model: str = typer.Option(None, "--model", help="HuggingFace model directory (default: the embedded sparsa-tiny)."),
    compression: float = typer.Option(10.0, "--compression", min=1.0, help="Prefill target every candidate runs at."),
    candidate: list[str] = typer.Option(None, "--candidate", "-c",
                                        help="Candidate sparse prefill methods (repeatable; default streaming "
                                             "vertical_slash block_sparse)."),
    task: str = typer.Option("niah_multikey", "--task", help="Task whose instance is the calibration prompt."),
    length: int = typer.Option(4096, "--length", min=64, help="Calibration prompt length in tokens."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration instance."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if present)."),
) -> None:
    """Assign each attention head the candidate pattern closest to dense attention (MInference-style offline search).

    Use the file with sparsa.apply(model, layers=sparsa.load_head_patterns(FILE)).
    """
    from pathlib import Path

    from .eval.models import load_model, model_context_length, resolve_model_path
    from .eval.tasks import generate, list_tasks
    from .integrations.hf.search import search_head_patterns
    from .methods.registry import method_class
    from .patterns import DEFAULT_CANDIDATES, summary, write_patterns

    from ._validation import check_out_file

    try:
        check_out_file("--out", out, overwrite=False)
    except ValueError as e:
        raise _fail(str(e)) from None
    names = list(dict.fromkeys(candidate)) if candidate else list(DEFAULT_CANDIDATES)
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
        ctx = model_context_length(lm)
        if ctx is not None and length > ctx:
            raise ValueError(f"--length: {length} exceeds the model's context of {ctx} tokens")
        inst = generate(task, length, seed, tok, split="train")
        ids = tok(inst.prompt, return_tensors="pt").input_ids
        layers, specs = search_head_patterns(lm, ids, compression=compression, candidates=names)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    calib = {"model": str(model or "sparsa-tiny"), "task": task, "length": length, "tokens": int(ids.shape[1]),
             "seed": seed}
    Path(out).absolute().parent.mkdir(parents=True, exist_ok=True)
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


@bench_app.command("nsa-train", context_settings=_PASS_THROUGH)
def bench_nsa_train(ctx: typer.Context) -> None:
    """A model trained with NSA vs its dense twin: step and decode speed, comparison table
    (options: `sparsa bench nsa-train --help`)."""
    from .bench.nsa_train import main

    main(list(ctx.args))


def _option_message(e: Exception, options: dict[str, str], *, others_as_options: bool = False) -> str:
    """A library check's ``field: message`` (or ``field, field: message``) with each field named
    as the command-line option that set it; other messages unchanged, or with
    ``others_as_options`` every other field read as ``--field``."""
    name, sep, rest = str(e).partition(":")
    names = [n.strip() for n in name.split(",")]
    if sep and (others_as_options or all(n in options for n in names)):
        return ", ".join(options.get(n, f"--{n}") for n in names) + ":" + rest
    return str(e)


EVAL_OPTIONS = {"model": "--model", "methods": "--method", "compressions": "--compression", "lengths": "--length",
                "tasks": "--task", "samples": "--samples", "modes": "--mode", "patterns": "--patterns",
                "batch_size": "--batch-size", "seed": "--seed", "out": "--out", "device": "--device",
                "time_limit_s": "--time-limit"}
REPORT_OPTIONS = {"out_dir": "--out", "alpha": "--alpha", "bench_dir": "--bench-dir"}
COST_OPTIONS = {"gpu_cost_per_day": "--gpu-cost-per-day", "gpu_cost_per_hour": "--gpu-cost-per-hour",
                "speedup": "--speedup", "method": "--method", "context": "--context", "param": "--param",
                "compression": "--compression", "batch": "--batch", "device": "--device", "baseline": "--baseline",
                "bench_dir": "--bench-dir", "requests_per_day": "--requests-per-day",
                "dense_seconds_per_request": "--dense-seconds-per-request", "output_tokens": "--output-tokens",
                "dense_ms_per_output_token": "--dense-ms-per-token", "path": "--plot"}


DEMO_OPTIONS = {"length": "--length", "heads": "--heads", "kv_heads": "--kv-heads", "head_dim": "--head-dim"}


BENCH_OPTIONS = {"contexts": "--context", "context": "--context", "methods": "--method"}


def _bench_option_error(e: Exception) -> typer.Exit:
    """A bench argument check's ``name: message`` as the CLI option's error."""
    return _fail(_option_message(e, BENCH_OPTIONS, others_as_options=True))


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
    out: str = typer.Option(None, "--out", help="Results JSON, appended row by row (default "
                                                "benchmarks/results/e2e.json, with --model e2e_real.json)."),
    model: str = typer.Option(None, "--model", help="A real model (HF directory or .gguf file) instead of the "
                                                    "random-weight Llama-3-8B shape; prefill only."),
    profile: bool = typer.Option(False, "--profile", help="With --model: split each forward's GPU time into "
                                                          "attention, GEMMs and the rest, plus host time."),
) -> None:
    """End-to-end prefill or decode through transformers: dense SDPA vs sparsa.apply.

    Without --model: a Llama-3-8B-shaped model with random weights. With --model: a real model
    on real text (one forward, logits of the last position), methods as in
    ``sparsa.bench.e2e_real.REAL_METHODS``.
    """
    import torch

    if phase not in ("prefill", "decode"):
        raise typer.BadParameter(f"{phase!r}: must be prefill or decode", param_hint="--phase")
    # every argument is checked before the GPU is asked for
    if model is not None and phase != "prefill":
        raise typer.BadParameter("--model runs the prefill phase only", param_hint="--phase")
    if profile and model is None:
        raise _fail("--profile: splits a real model's forward time; it needs --model")
    if compression is not None and (model is not None or phase == "decode"):
        raise _fail("--compression: sets the target of the random-weight prefill run; "
                    + ("--model runs the fixed configurations of sparsa.bench.e2e_real.REAL_METHODS"
                       if model is not None else "decode methods run their own budgets (DECODE_METHODS)"))
    if model is not None:
        from .bench.e2e_real import REAL_METHODS

        names = list(method) if method else list(REAL_METHODS)
        bad = [m for m in names if m not in REAL_METHODS]
        if bad:
            raise typer.BadParameter(f"{bad}: choose from {list(REAL_METHODS)}", param_hint="--method")
    elif phase == "decode":
        from .bench.e2e import DECODE_METHODS, check_e2e_decode_args

        bad = [m for m in method or [] if m not in DECODE_METHODS]
        if bad:
            raise typer.BadParameter(f"{bad}: choose from {list(DECODE_METHODS)}", param_hint="--method")
        for n in context or [65536]:
            try:
                check_e2e_decode_args(context=n, batch=batch, layers=layers or 4, steps=steps, warmup=warmup,
                                      methods=list(method) if method else None)
            except ValueError as e:
                raise _bench_option_error(e) from None
    else:
        from .bench.e2e import check_e2e_args

        try:
            check_e2e_args(context or [32768, 131072], method or ["vertical_slash"], layers=layers or 32, reps=reps,
                           compression=compression)
        except (ValueError, TypeError) as e:
            raise _bench_option_error(e) from None
    if not torch.cuda.is_available():
        typer.echo("error: `sparsa bench` needs a CUDA GPU", err=True)
        raise typer.Exit(2)
    try:
        if model is not None:
            from .bench.e2e_real import run_e2e_real

            run_e2e_real(model, context or [32768, 131072], names, out or "benchmarks/results/e2e_real.json",
                         reps=reps, profile=profile)
            return
        out = out or "benchmarks/results/e2e.json"
        if phase == "decode":
            from .bench.e2e import run_e2e_decode_bench

            for n in context or [65536]:
                run_e2e_decode_bench(out, context=n, batch=batch, layers=layers or 4, steps=steps, warmup=warmup,
                                     methods=list(method) if method else None)
            return
        from .bench.e2e import run_e2e_bench

        run_e2e_bench(context or [32768, 131072], method or ["vertical_slash"], out, layers=layers or 32, reps=reps,
                      compression=compression)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


PRESETS: dict[str, dict[str, object]] = {
    # the README's main job: the shipped model on the CPU in a few minutes
    "quick": {"model": "sparsa-tiny", "lengths": [1024], "samples": 8, "compressions": [2.0, 10.0],
              "tasks": ["niah_multikey", "variable_tracking"]},
    # The Sparse Frontier's grid
    "full": {"compressions": [1.0, 2.0, 3.0, 5.0, 10.0, 20.0], "samples": 50},
}


@app.command("eval")
def eval_sweep(
    model: str = typer.Option(None, "--model", help="sparsa-tiny (default), a HF model directory or hub id in the "
                                                    "local cache, or a .gguf file."),
    method: list[str] = typer.Option(None, "--method", "-m", help="Methods (repeatable; default: all; dense is "
                                                                  "always run as the paired baseline)."),
    compression: list[float] = typer.Option(None, "--compression", "-c", help="Target compressions (repeatable; "
                                                                              "default 1 2 3 5 10 20)."),
    length: list[int] = typer.Option(None, "--length", "-n", help="Prompt lengths in tokens (repeatable)."),
    task: list[str] = typer.Option(None, "--task", "-t", help="Tasks (repeatable; default: the four retrieval "
                                                              "tasks; 'all' for every task)."),
    samples: int = typer.Option(None, "--samples", min=1, help="Samples per cell."),
    mode: list[str] = typer.Option(None, "--mode", help="aware (the question is in the compressed prompt; "
                                                        "default) and/or agnostic (the context is compressed "
                                                        "before the question is seen)."),
    patterns: list[str] = typer.Option(None, "--patterns", help="Per-head pattern files from search-patterns, "
                                                                "each evaluated as a method (repeatable)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts per forward (question-aware cells)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the task instances."),
    preset: str = typer.Option(None, "--preset", help="quick (the shipped model on the CPU, a few minutes) or "
                                                      "full (every method, compression 1-20, 50 samples); "
                                                      "explicit options override it."),
    out: str = typer.Option(None, "--out", help="Results directory (default results/frontier-<model>); an "
                                                "existing one is continued, never overwritten."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: cuda if present)."),
    time_limit: float = typer.Option(None, "--time-limit", min=0.0, help="Minutes; start no new batch after this "
                                                                         "(run again to continue)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the report when the sweep is complete."),
) -> None:
    """Sweep methods x compression x lengths x tasks on a model (resumable); then write the report."""
    from pathlib import Path

    from .eval.sweep import SweepConfig

    _check_device_option(device)
    if report:
        from .eval.report import require_matplotlib

        try:
            require_matplotlib("--report")
        except ValueError as e:
            raise _fail(f"{e}; or pass --no-report and write it later with `sparsa report`") from None
    base: dict[str, object] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise typer.BadParameter(f"{preset!r}: choose from {list(PRESETS)}", param_hint="--preset")
        base = dict(PRESETS[preset])
    if model is not None:
        base["model"] = model
    if method:
        base["methods"] = list(method)
    if compression:
        base["compressions"] = list(compression)
    if length:
        base["lengths"] = list(length)
    if task:
        from .eval.tasks import list_tasks
        if "all" in task and len(task) > 1:
            raise _fail("--task: 'all' already means every task; give it alone or name the tasks")
        base["tasks"] = list_tasks() if list(task) == ["all"] else list(task)
    if samples is not None:
        base["samples"] = samples
    if mode:
        base["modes"] = list(mode)
    if patterns:
        base["patterns"] = list(patterns)
    base["batch_size"] = batch_size
    base["seed"] = seed
    try:
        config = SweepConfig(**base)  # type: ignore[arg-type]
        out_dir = Path(out) if out is not None else Path("results") / f"frontier-{Path(config.model).stem}"
        if out is not None and not out.strip():
            raise ValueError("out: empty path; name a directory (\".\" for the current one)")
        res = _run_eval(config, out_dir, device, None if time_limit is None else 60.0 * time_limit)
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise _fail(_option_message(e, EVAL_OPTIONS)) from None
    if res is None:
        return
    typer.echo(f"{res.rows_written} samples written to {out_dir} in {res.seconds:.0f} s")
    if res.failed_cells:
        failed = ", ".join(str(p) for p in sorted(out_dir.glob("errors.rank*.jsonl")))
        raise _fail(f"{res.failed_cells} cell(s) failed and have no rows; their errors are in {failed}")
    if not res.finished:
        typer.echo("stopped at the time limit; run the same command again to continue")
    elif report:
        from .eval.report import write_report

        try:
            path = write_report(out_dir, out_dir / "report")
        except ValueError as e:
            failed = sorted(out_dir.glob("errors.rank*.jsonl"))
            hint = f" (cells that failed are listed in {', '.join(map(str, failed))})" if failed else ""
            raise _fail(f"report: {e}{hint}") from None
        typer.echo(f"report: {path}")


def _run_eval(config, out_dir, device, time_limit_s):  # type: ignore[no-untyped-def]
    """Run the sweep in this process, or as one rank of torchrun (gloo barrier, rank 0 reports)."""
    import os

    from .eval.sweep import run_sweep

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return run_sweep(config, out_dir, device=device, time_limit_s=time_limit_s)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        res = run_sweep(config, out_dir, device=device, time_limit_s=time_limit_s,
                        rank=dist.get_rank(), world=dist.get_world_size())
        flag = [res.finished, res.failed_cells]
        everyone: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, flag)
        res.finished = all(f[0] for f in everyone)  # type: ignore[index]
        res.failed_cells = sum(f[1] for f in everyone)  # type: ignore[index]
        # no rank tears its connections down while another may still be finishing the gather
        dist.barrier()
        return res if dist.get_rank() == 0 else None
    finally:
        dist.destroy_process_group()


@app.command("report")
def report(
    results: str = typer.Argument(..., help="Results directory (every rows*.jsonl in it, per-rank files merged) "
                                            "or a JSON-lines file."),
    out: str = typer.Option("report", "--out", "-o", help="Output directory for report.md, plots and CSVs."),
    bench_dir: str = typer.Option(None, "--bench-dir",
                                  help="Benchmark JSONs for the isoCost view (default benchmarks/results when it "
                                       "exists; '' to skip the view)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the paired McNemar test."),
) -> None:
    """Markdown report of a sweep: per-cell scores with intervals, paired tests against dense, maximum
    tolerable compression per task and method, plots."""
    from pathlib import Path

    from .eval.report import write_report

    if bench_dir is None:
        bench_dir = "benchmarks/results" if Path("benchmarks/results").is_dir() else ""
    elif bench_dir and not Path(bench_dir).is_dir():
        raise _fail(f"--bench-dir: {bench_dir} is not a directory; pass the directory of the benchmark JSONs, "
                    "or '' to leave the isoCost view out")
    try:
        path = write_report(results, out, bench_dir=bench_dir or None, alpha=alpha)
    except ValueError as e:
        raise _fail(_option_message(e, REPORT_OPTIONS)) from None
    typer.echo(f"wrote {path}")


@app.command("cost")
def cost(
    gpu_cost_per_day: float = typer.Option(None, "--gpu-cost-per-day", help="Dollars per GPU per day."),
    gpu_cost_per_hour: float = typer.Option(None, "--gpu-cost-per-hour", help="Dollars per GPU per hour (x24)."),
    speedup: float = typer.Option(None, "--speedup", help="Sparse speedup over dense, by hand."),
    method: str = typer.Option(None, "--method", "-m", help="Read the speedup of this method from --bench-dir."),
    context: int = typer.Option(None, "--context", "-n", help="Context length in tokens (with --method)."),
    compression: float = typer.Option(None, "--compression", help="Use benchmark rows near this compression."),
    batch: int = typer.Option(None, "--batch", min=1, help="Use benchmark rows of this batch size."),
    device: str = typer.Option(None, "--device", help="Use benchmark rows of this card (substring)."),
    pass_: str = typer.Option(None, "--pass", help="Benchmark pass (default: e2e_prefill, fwd, e2e_decode, decode)."),
    baseline: str = typer.Option("sdpa_cudnn", "--baseline", help="Dense baseline of the speedups."),
    param: list[str] = typer.Option(None, "--param", help="KEY=VALUE a benchmark row must have (repeatable)."),
    bench_dir: str = typer.Option("benchmarks/results", "--bench-dir", help="Benchmark results directory."),
    requests_per_day: float = typer.Option(None, "--requests-per-day", help="Workload: requests per day."),
    dense_seconds_per_request: float = typer.Option(None, "--dense-seconds-per-request",
                                                    help="Workload: dense GPU seconds per request."),
    output_tokens: int = typer.Option(None, "--output-tokens", help="Workload: generated tokens per request."),
    dense_ms_per_token: float = typer.Option(None, "--dense-ms-per-token",
                                             help="Workload: dense GPU ms per generated token."),
    plot: str = typer.Option(None, "--plot", help="Write a cost-per-day vs context plot from the benchmarks."),
) -> None:
    """Dollars per day dense vs sparse, and the monthly saving (30 days/month)."""
    from pathlib import Path

    from . import cost as c

    try:
        price = c.gpu_cost_per_day(gpu_cost_per_day, gpu_cost_per_hour)
        params = {}
        for kv in param or []:
            if "=" not in kv or not kv.split("=", 1)[0].strip():
                raise ValueError(f"param: {kv!r} is not KEY=VALUE")
            k, v = kv.split("=", 1)
            params[k] = v
        filters = dict(baseline=baseline, passes=[pass_] if pass_ else None, device=device, batch=batch,
                       compression=compression, params=params or None)
        if speedup is not None and method is not None:
            raise ValueError("speedup, method: give --speedup or --method, not both")
        if method is None and plot is None:
            given = [name for name, v in (("--context", context), ("--compression", compression), ("--batch", batch),
                                          ("--device", device), ("--pass", pass_), ("--param", param)) if v not in (None, [])]
            if given:
                raise ValueError(f"{given[0]}: selects benchmark rows, so it needs --method or --plot "
                                 "(a --speedup given by hand is used as it is)")
        if (method or plot) and not Path(bench_dir).is_dir():
            raise ValueError(f"--bench-dir: {bench_dir} is not a directory; pass the directory of the benchmark JSONs")
        if plot is not None and method is None and speedup is None:
            if context is not None:
                raise ValueError("context: the plot spans every measured context; add --method for the speed-up "
                                 "at this one")
            given = [o for o, v in (("--requests-per-day", requests_per_day), ("--output-tokens", output_tokens),
                                    ("--dense-seconds-per-request", dense_seconds_per_request),
                                    ("--dense-ms-per-token", dense_ms_per_token)) if v is not None]
            if given:
                raise ValueError(f"{given[0]}: a workload needs a speed-up (--speedup, or --method with --context); "
                                 "the plot alone shows the cost per GPU-day")
        rows = c.load_bench_rows(bench_dir) if (method or plot) else []
        if method is not None and (context is not None or plot is None):
            if context is None:
                raise ValueError("context: --method needs --context (tokens)")
            lk = c.lookup_speedup(rows, method, context, **filters)
            typer.echo(c.describe_lookup(lk))
            speedup = lk.speedup
        if speedup is None and plot is None:
            raise ValueError("speedup: give --speedup, or --method with --context, or --plot")
        if speedup is not None:
            load = None
            if requests_per_day is not None:
                load = c.workload(requests_per_day, dense_seconds_per_request, output_tokens, dense_ms_per_token)
            elif any(x is not None for x in (dense_seconds_per_request, output_tokens, dense_ms_per_token)):
                raise ValueError("requests_per_day: needed with --dense-seconds-per-request / --output-tokens")
            for line in c.describe_cost(c.estimate_cost(price, speedup, load)):
                typer.echo(line)
        if plot is not None:
            try:
                path = c.plot_cost_vs_context(rows, price, plot, methods=[method] if method else None, **filters)
            except ValueError as e:
                msg = str(e)
                raise ValueError("--plot: " + msg.removeprefix("path: ") if msg.startswith("path: ") else msg) from None
            typer.echo(f"wrote {path}")
    except ValueError as e:
        raise _fail(_option_message(e, COST_OPTIONS)) from None


if __name__ == "__main__":  # pragma: no cover
    app()
