"""The frontier sweep on the shipped model: resume, phases, compression 1, ranks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsa.eval import greedy as greedy_mod
from sparsa.eval import sweep as sweep_mod
from sparsa.eval.greedy import Prompt, greedy_generate
from sparsa.eval.sweep import SweepConfig, cells, read_results, row_key, run_sweep, shard

pytestmark = pytest.mark.slow
LENGTH = 512


@pytest.fixture(scope="module")
def tiny():
    from sparsa.eval.models import load_model

    torch.manual_seed(0)
    return load_model(device="cpu")


def _strip(rows):
    """Rows without their timing, keyed by (cell, sample)."""
    return {row_key(r): {k: v for k, v in r.items() if k != "seconds"} for r in rows}


def _config(**kw):
    base = dict(methods=["streaming"], compressions=[1.0, 10.0], lengths=[LENGTH], tasks=["niah_single"],
                samples=3, batch_size=2)
    base.update(kw)
    return SweepConfig(**base)


def test_interrupted_sweep_resumes_to_the_same_rows(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    cfg = _config()
    full = run_sweep(cfg, tmp_path / "a", model=model, tokenizer=tok, progress=False)
    assert full.finished and full.rows_written == full.rows_total == len(cells(cfg)) * cfg.samples

    calls = {"n": 0}
    real = greedy_mod.greedy_generate

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(sweep_mod, "greedy_generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, tmp_path / "b", model=model, tokenizer=tok, progress=False)
    part = tmp_path / "b" / "rows.rank0.jsonl"
    kept = part.read_text().splitlines()
    assert 0 < len(kept) < full.rows_total
    with open(part, "a") as fh:                       # a write cut short by the interruption
        fh.write('{"task": "niah_sin')
    monkeypatch.setattr(sweep_mod, "greedy_generate", real)
    with pytest.warns(UserWarning, match="torn"):
        again = run_sweep(cfg, tmp_path / "b", model=model, tokenizer=tok, progress=False)
    assert again.rows_written == full.rows_total - len(kept)
    assert _strip(read_results(tmp_path / "b")) == _strip(read_results(tmp_path / "a"))
    # the rows written before the interruption are still the first lines of the file
    assert part.read_text().splitlines()[:len(kept)] == kept


def test_compression_one_scores_exactly_as_dense(tiny, tmp_path):
    model, tok = tiny
    cfg = _config(methods=["vertical_slash", "block_sparse", "streaming", "snapkv", "quest"], compressions=[1.0],
                  samples=4, batch_size=4)
    run_sweep(cfg, tmp_path, model=model, tokenizer=tok, progress=False)
    rows = read_results(tmp_path)
    dense = {r["sample"]: r for r in rows if r["method"] == "dense"}
    assert len(dense) == 4 and sum(r["exact"] for r in dense.values()) >= 2   # the baseline answers
    others = [r for r in rows if r["method"] != "dense"]
    assert len(others) == 6 * 4                      # streaming runs as prefill and as decode
    for r in others:
        assert r["compression"] == pytest.approx(1.0), r
        assert r["prediction"] == dense[r["sample"]]["prediction"], (r["method"], r["phase"])
        assert r["score"] == dense[r["sample"]]["score"]


class _Recorder:
    """Records the number of new tokens of every forward of a model."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.hook = model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        self.sizes.append(int(ids.shape[1]))

    def close(self):
        self.hook.remove()


@pytest.mark.parametrize("mode,decode_phase", [("aware", False), ("aware", True), ("agnostic", False),
                                               ("agnostic", True)])
def test_answers_come_from_the_measured_phase(tiny, mode, decode_phase):
    model, tok = tiny
    from sparsa.eval.prompts import split_prompt_ids
    from sparsa.eval.tasks import generate

    inst = generate("niah_single", LENGTH, 3, tok)
    ctx, q = split_prompt_ids(tok, inst)
    rec = _Recorder(model)
    try:
        res = greedy_generate(model, [Prompt(ctx, q)], max_new_tokens=4, mode=mode, decode_phase=decode_phase)
    finally:
        rec.close()
    full = ctx + q
    if mode == "aware":
        expect = [len(full) - 1, 1] if decode_phase else [len(full)]
    else:
        expect = [len(ctx)] + [1] * len(q) if decode_phase else [len(ctx), len(q)]
    assert rec.sizes[:len(expect)] == expect
    assert all(s == 1 for s in rec.sizes[len(expect):])
    # the first generated token is the model's choice right after the whole prompt: for a
    # prefill-phase method it is computed by the prefill itself
    with torch.no_grad():
        first = int(model(torch.tensor([full])).logits[0, -1].argmax())
    assert res.ids[0][0] == first
    # and the prompt ends right before the answer (the answer prefix is the last thing in it)
    assert tok.decode(full[-3:]).strip() and inst.answer_text not in tok.decode(full[-8:])


def test_prefill_cell_answers_from_its_sparse_prefill(tiny, tmp_path):
    """A prefill method that discards the needle fails, although every decode step is dense."""
    model, tok = tiny
    cfg = _config(methods=["streaming"], compressions=[200.0], samples=4, batch_size=4)
    run_sweep(cfg, tmp_path, model=model, tokenizer=tok, progress=False)
    rows = read_results(tmp_path)
    dense = sum(r["exact"] for r in rows if r["method"] == "dense")
    pre = [r for r in rows if r["method"] == "streaming" and r["phase"] == "prefill"]
    assert dense >= 2
    assert all(r["compression"] > 5 for r in pre)
    assert sum(r["exact"] for r in pre) < dense


def test_shards_cover_the_grid_once():
    grid = cells(_config(methods=["streaming", "quest"], lengths=[512, 1024], tasks=["niah_single", "doc_qa"]))
    parts = [shard(grid, 3, r, 3) for r in range(3)]
    flat = [c for p in parts for c in p]
    assert sorted(flat, key=str) == sorted(grid, key=str) and len(set(flat)) == len(grid)
    # retrieval tasks come first in the run order
    assert [c.task for c in grid].index("doc_qa") > max(i for i, c in enumerate(grid) if c.task == "niah_single")


def test_config_of_another_model_is_refused(tmp_path, tiny):
    model, tok = tiny
    run_sweep(_config(samples=1, methods=["quest"], compressions=[5.0]), tmp_path, model=model, tokenizer=tok,
              progress=False)
    with pytest.raises(ValueError, match="out:.*model"):
        run_sweep(_config(model="other", samples=1), tmp_path, model=model, tokenizer=tok, progress=False)


def _rows_then(tmp_path, tiny, change):
    """A finished one-sample sweep in tmp_path/src, its rows copied to tmp_path/dst after ``change``."""
    model, tok = tiny
    cfg = _config(samples=1, methods=["quest"], compressions=[5.0])
    run_sweep(cfg, tmp_path / "src", model=model, tokenizer=tok, progress=False)
    (tmp_path / "dst").mkdir()
    for f in (tmp_path / "src").glob("rows.*.jsonl"):
        rows = [change(json.loads(line)) for line in f.read_text().splitlines()]
        (tmp_path / "dst" / f.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg


def test_rows_without_their_config_are_not_taken_as_done(tmp_path, tiny):
    model, tok = tiny
    cfg = _rows_then(tmp_path, tiny, lambda r: r)
    before = sorted(p.name for p in (tmp_path / "dst").iterdir())
    with pytest.raises(ValueError, match="out: .*rows but no config.json"):
        run_sweep(cfg, tmp_path / "dst", model=model, tokenizer=tok, progress=False)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == before       # nothing written


@pytest.mark.parametrize("field,value,match", [("model", "Llama-3-8B", "rows of model 'Llama-3-8B'"),
                                               ("seed", 7_000_021, "rows of another --seed")])
def test_rows_of_another_model_or_seed_are_refused(tmp_path, tiny, field, value, match):
    model, tok = tiny
    cfg = _rows_then(tmp_path, tiny, lambda r: {**r, field: value})
    (tmp_path / "dst" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    with pytest.raises(ValueError, match=match):
        run_sweep(cfg, tmp_path / "dst", model=model, tokenizer=tok, progress=False)


@pytest.mark.parametrize("kw,match", [({"methods": ["nope"]}, "methods"), ({"compressions": [0.5]}, "compressions"),
                                      ({"lengths": [10]}, "lengths"), ({"tasks": ["x"]}, "tasks"),
                                      ({"samples": 0}, "samples"), ({"modes": ["both"]}, "modes")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        _config(**kw)


def test_length_above_the_model_context_is_refused(tiny, tmp_path):
    model, tok = tiny
    too_long = int(model.config.max_position_embeddings) * 2
    with pytest.raises(ValueError, match="lengths"):
        run_sweep(_config(lengths=[too_long]), tmp_path, model=model, tokenizer=tok, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_give_the_same_table_as_one(tmp_path):
    args = ["-m", "sparsa", "eval", "-m", "streaming", "-m", "quest", "-c", "1", "-c", "10", "-n", str(LENGTH),
            "-t", "niah_single", "-t", "niah_multikey", "--samples", "2", "--batch-size", "2", "--device", "cpu",
            "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), *args, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "two").glob("rows.*.jsonl"))
    assert files == ["rows.rank0.jsonl", "rows.rank1.jsonl"]
    assert all((tmp_path / "two" / f).read_text().strip() for f in files)   # both ranks did work
    a, b = _strip(read_results(tmp_path / "one")), _strip(read_results(tmp_path / "two"))
    assert a == b
    from sparsa.eval.metrics import summarize_cells

    def table(d):
        import dataclasses
        return [{k: v for k, v in dataclasses.asdict(s).items() if k != "seconds"}
                for s in summarize_cells([{**r, "seconds": 0.0} for r in d.values()])]

    assert table(a) == table(b)
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["samples"] == 2 and Path(tmp_path / "two").is_dir()


@pytest.mark.parametrize("text,done", [(" 123", False), (" 123.\n", True), (":\n", False), ("Values:\n 1, 2", False),
                                       ("Values:\n 1, 2\n", False), ("Values:\n 1, 2\n\n", True), ("\n\n", False),
                                       (":\n\n- a: 1\n- b: 2\n", False), (":\n\n- a: 1\n- b: 2\n\nmore", True)])
def test_answer_line_done(text, done):
    from sparsa.eval.sweep import answer_line_done

    assert answer_line_done(text) is done


@pytest.mark.parametrize("text", [" 123.\n", "**\n", ":\n\n- a: 1\n- b: 2\n\n", "Values:\n 1\n 2\n\n",
                                  "\n The numbers are 4, 5.\n"])
@pytest.mark.parametrize("more", ["", "6\n", "\n- c: 3\n", "The numbers are 7.\n"])
def test_stopping_when_done_never_changes_what_is_scored(text, more):
    # a list the model has not closed yet must not be cut after its first line
    from sparsa.eval.scoring import answer_text
    from sparsa.eval.sweep import answer_line_done

    assert answer_line_done(text)
    assert answer_text(text + more) == answer_text(text)


def test_a_failing_cell_is_logged_and_skipped(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    real = greedy_mod.greedy_generate

    def broken_decode(*a, **k):
        if k.get("decode_phase"):
            raise RuntimeError("kernel exploded")
        return real(*a, **k)

    monkeypatch.setattr(sweep_mod, "greedy_generate", broken_decode)
    with pytest.warns(UserWarning, match="kernel exploded"):
        res = run_sweep(_config(methods=["quest", "block_sparse"], compressions=[5.0], samples=2), tmp_path,
                        model=model, tokenizer=tok, progress=False)
    rows = read_results(tmp_path)
    assert {r["method"] for r in rows} == {"dense", "block_sparse"}
    errors = [json.loads(x) for x in (tmp_path / "errors.rank0.jsonl").read_text().splitlines()]
    assert [e["method"] for e in errors] == ["quest"] and "kernel exploded" in errors[0]["error"]
    assert res.finished


def test_each_sample_is_rendered_once_for_all_its_cells(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    seen = []
    real_get = sweep_mod.get_task

    def counting(name):
        task = real_get(name)

        class Counted:
            def generate(self, length, seed, *a, **k):
                seen.append((name, length, seed))
                return task.generate(length, seed, *a, **k)
        return Counted()

    monkeypatch.setattr(sweep_mod, "get_task", counting)
    cfg = _config(methods=["streaming", "snapkv"], compressions=[2.0, 5.0], samples=2)
    res = run_sweep(cfg, tmp_path / "r", model=model, tokenizer=tok, progress=False)
    assert res.rows_written == 2 * (1 + 2 * 2 + 2)  # dense, streaming prefill + decode, snapkv
    assert len(seen) == 2 and len(set(seen)) == 2


def test_values_given_twice_are_one_cell():
    cfg = SweepConfig(methods=["quest", "quest"], lengths=[512, 512], tasks=["niah_single", "niah_single"],
                      modes=["aware", "aware"], compressions=[5.0, 5.0], samples=1)
    assert (cfg.methods, cfg.lengths, cfg.tasks, cfg.modes, cfg.compressions) == (
        ["quest"], [512], ["niah_single"], ["aware"], [5.0])
    assert len(cells(cfg)) == len(set(cells(cfg)))
