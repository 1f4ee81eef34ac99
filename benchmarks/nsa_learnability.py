"""Does NSA learn retrieval where its dense twin does? The 1K runs of recipes/nsa-1k/, side by side.

Reads each run's training log (``log.jsonl``: step rows and ``quick_eval`` rows) and writes
per run: the answer-token loss and teacher-forced exact match per task against tokens seen,
and the greedy scores of the quick evaluations; then a two-panel plot (answer loss; greedy
single-needle score).

    python benchmarks/nsa_learnability.py OUT.json --plot OUT.png \\
        dense=RUNS/nsa-1k-dense.log.jsonl nsa-full=RUNS/nsa-1k-nsa-full.log.jsonl ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def read_run(path: str | Path) -> dict[str, Any]:
    """Step rows and quick-evaluation rows of one ``log.jsonl`` (a torn last line is skipped)."""
    steps, evals = [], []
    for line in Path(path).read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("event") == "quick_eval":
            evals.append({"step": r["step"], "length": r["length"], "scores": r["scores"]})
        elif "loss" in r:
            steps.append(r)
    tokens_at = {r["step"]: r["tokens"] for r in steps}
    for e in evals:
        e["tokens"] = tokens_at.get(e["step"])
    return {
        "steps": steps[-1]["step"] if steps else 0,
        "tokens": steps[-1]["tokens"] if steps else 0,
        "answer_loss": [[r["tokens"], r["answer_loss"]] for r in steps if "answer_loss" in r],
        "teacher_forced_exact": [[r["tokens"], r["teacher_forced_exact"]] for r in steps
                                 if "teacher_forced_exact" in r],
        "quick_eval": evals,
    }


def plot(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, run in result["runs"].items():
        xs = [t / 1e6 for t, _ in run["answer_loss"]]
        a.plot(xs, [v for _, v in run["answer_loss"]], label=name, lw=1)
        ev = [e for e in run["quick_eval"] if e["tokens"] is not None and "niah_single" in e["scores"]]
        b.plot([e["tokens"] / 1e6 for e in ev], [e["scores"]["niah_single"] for e in ev], marker="o", label=name)
    a.set_xlabel("training tokens (M)")
    a.set_ylabel("answer-token loss")
    a.set_yscale("log")
    b.set_xlabel("training tokens (M)")
    b.set_ylabel("single needle, greedy score")
    b.set_ylim(-0.05, 1.05)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(result.get("title", "NSA learnability at 1K"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+", help="NAME=PATH/log.jsonl")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--device", default=None, help="the card the runs trained on (recorded)")
    a = ap.parse_args(argv)
    runs = {}
    for spec in a.runs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"runs: expected NAME=PATH, got {spec!r}")
        runs[name] = read_run(path)
    result = {"device": a.device, "runs": runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    if a.plot:
        plot(result, a.plot)
    for name, r in runs.items():
        last = r["answer_loss"][-1][1] if r["answer_loss"] else None
        qe = r["quick_eval"][-1]["scores"] if r["quick_eval"] else {}
        print(f"{name:>12}: {r['tokens'] / 1e6:6.1f}M tokens, answer loss {last}, last greedy {qe}")


if __name__ == "__main__":
    main()
