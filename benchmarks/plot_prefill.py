"""Bar chart (SVG, no plotting library needed) of benchmarks/results/prefill.json.

One bar per measurement: speedup over SDPA cuDNN measured in the same run (log scale), the
label giving context, method and the parameters that distinguish the rows.

    python benchmarks/plot_prefill.py [results.json] [out.svg]
"""
from __future__ import annotations

import json
import math
import sys
from html import escape

SKIP = {"block": 64, "vertical": 1000, "slash": 6096}


def label(row: dict) -> str:
    p = {k: v for k, v in row["params"].items() if SKIP.get(k) != v}
    parts = [f"{k}={v}" for k, v in p.items()]
    return f"{row['context'] // 1024}K {row['method']} " + " ".join(parts)


def main() -> None:
    src = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/prefill.json"
    dst = sys.argv[2] if len(sys.argv) > 2 else src.rsplit(".", 1)[0] + ".svg"
    data = json.load(open(src))
    rows = [r for r in data["rows"] if r["baseline"] == "sdpa_cudnn"]
    bar_h, left, width = 18, 560, 420
    lo, hi = math.log10(0.05), math.log10(20.0)

    def x(s: float) -> float:
        return left + (math.log10(min(max(s, 0.05), 20.0)) - lo) / (hi - lo) * width

    height = 60 + bar_h * len(rows) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
           'font-family="monospace" font-size="11">',
           f'<text x="10" y="20" font-size="13">Prefill speedup vs SDPA cuDNN, same run — {escape(data["device"])}, '
           f'torch {data["torch"]}, triton {data["triton"]}</text>']
    for tick in (0.1, 0.5, 1, 2, 5, 7, 10):
        out.append(f'<line x1="{x(tick):.1f}" y1="40" x2="{x(tick):.1f}" y2="{height - 25}" stroke="#ccc"/>')
        out.append(f'<text x="{x(tick) - 8:.1f}" y="{height - 10}">{tick}x</text>')
    for i, r in enumerate(rows):
        y = 45 + i * bar_h
        color = "#4a7" if r["speedup"] >= 1 else "#c66"
        out.append(f'<text x="10" y="{y + 12}">{escape(label(r))[:88]}</text>')
        out.append(f'<rect x="{x(0.05):.1f}" y="{y + 2}" width="{x(r["speedup"]) - x(0.05):.1f}" '
                   f'height="{bar_h - 5}" fill="{color}"/>')
        out.append(f'<text x="{x(r["speedup"]) + 4:.1f}" y="{y + 12}">{r["speedup"]:.2f}x ({r["ms"]:.1f} ms)</text>')
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
