"""Speedup over SDPA cuDNN against context length, from benchmarks/results/prefill.json.

One line per method and compression target, each point a method end to end (planning
included) over SDPA cuDNN timed in the same run; dense FA2 and FlexAttention as dashed
references. One panel per target (vertical-slash's paper budget, 1000 + 6096 lines, has its
own). Needs matplotlib (``pip install sparsa[eval]``).

    python benchmarks/plot_prefill.py [results.json] [out.svg]
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict

from sparsa.bench.prefill import end_to_end

BASELINES = ("sdpa_flash", "flex")


def target(row: dict) -> str:
    p = row["params"]
    if p.get("target") is not None:
        return f"{float(p['target']):g}"
    if p.get("compression") is not None:
        return f"{float(p['compression']):g}"
    if "vertical" in p:
        return f"{p['vertical']}+{p['slash']} lines"
    return "alpha 0.9" if "alpha" in p else ""


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/prefill.json"
    dst = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".svg"
    data = json.load(open(src))
    rows = [r for r in data["rows"] if r["baseline"] == "sdpa_cudnn"]
    panels: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    base: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:       # later rows (a rerun) replace earlier ones
        if r["method"] in BASELINES:
            base[r["method"]][r["context"]] = r["speedup"]
        elif end_to_end(r) and target(r):
            panels[target(r)][r["method"]][r["context"]] = r["speedup"]
    def order(t: str) -> tuple:
        try:
            return (0, float(t), t)
        except ValueError:
            return (1, 0.0, t)
    names = sorted(panels, key=order)
    methods = sorted({m for panel in panels.values() for m in panel})
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    cols = min(3, len(names))
    rows_n = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.8 * rows_n), sharey=True, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        for method, pts in sorted(panels[name].items()):
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], marker="o", label=method, color=colors[method])
        for method, pts in base.items():
            xs = sorted(pts)
            ax.plot(xs, [pts[x] for x in xs], linestyle="--", color="grey", alpha=0.6,
                    marker="x" if method == "flex" else "+", label=f"dense {method}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_title(f"compression {name}" if order(name)[0] == 0 else name)
        ax.grid(True, which="both", alpha=0.3)
    for row in axes:
        row[0].set_ylabel("speedup over SDPA cuDNN (same run)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Prefill, Llama-3-8B attention shape, bf16 - {data['device']}, torch {data['torch']}, "
                 f"triton {data['triton']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
