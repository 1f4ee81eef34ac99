"""The README's python code blocks run as written, and so do the docstring examples in sparsa/."""
from __future__ import annotations

import doctest
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SKIP = re.compile(r"<!--\s*doctest:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Runs every block in a fresh namespace, in one process (imports are paid once); a block that
# registers a method or changes global state cannot leak into the test session.
RUNNER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
failed = []
for line, code in blocks:
    try:
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    except BaseException:
        failed.append((line, traceback.format_exc()))
json.dump(failed, open(sys.argv[2], "w"))
"""


def readme_blocks(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(blocks to run, skipped blocks with their reasons) as (first code line, text) pairs.

    A block is skipped when the line just above its fence is ``<!-- doctest: skip (why) -->``.
    """
    run, skipped = [], []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 2
        above = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(above)
        (skipped if skip else run).append((line, skip.group(1).strip() if skip else m.group(1)))
    return run, skipped


def test_readme_python_blocks_run(tmp_path):
    run, skipped = readme_blocks((ROOT / "README.md").read_text())
    assert len(run) >= 4 and len(skipped) <= 3, (len(run), skipped)  # skips stay rare
    assert all(reason for _, reason in skipped), "a skip marker says why"
    (tmp_path / "blocks.json").write_text(json.dumps(run))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)  # as a user runs them: the reference ops on the CPU
    r = subprocess.run([sys.executable, "runner.py", "blocks.json", "failed.json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert not failed, "\n\n".join(f"README.md line {line}:\n{tb}" for line, tb in failed)


def test_skip_marker_parsing():
    text = "a\n<!-- doctest: skip (needs CUDA) -->\n```python\nx = 1\n```\n\n```python\ny = 2\n```\n"
    run, skipped = readme_blocks(text)
    assert run == [(8, "y = 2\n")] and skipped == [(4, "(needs CUDA)")]


def _modules() -> list[str]:
    import sparsa

    names = ["sparsa"]
    for info in pkgutil.walk_packages(sparsa.__path__, "sparsa."):
        if ".test_" not in info.name and not info.name.rsplit(".", 1)[-1].startswith("test_"):
            names.append(info.name)
    return names


def _with_examples() -> list[str]:
    """Modules whose source has a ``>>>`` example (found without importing them all)."""
    out = []
    for name in _modules():
        spec = importlib.util.find_spec(name)
        if spec and spec.origin and spec.origin.endswith(".py") and ">>> " in Path(spec.origin).read_text():
            out.append(name)
    return out


@pytest.mark.parametrize("module", _with_examples() or [pytest.param(None, marks=pytest.mark.skip("no examples"))])
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.failed == 0, f"{module}: {res.failed} of {res.attempted} examples failed"
