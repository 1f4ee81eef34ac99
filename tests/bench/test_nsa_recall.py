"""benchmarks/nsa_recall.py: the recall task's layout and one short training run."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("nsa_recall", ROOT / "benchmarks" / "nsa_recall.py")
nr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nr)


def test_every_pair_lies_beyond_the_window_of_every_question():
    length, pairs, window = 128, 6, 32
    tokens, targets = nr.make_batch(8, length, pairs, window, torch.Generator().manual_seed(0))
    assert tokens.shape == targets.shape == (8, length)
    for b in range(8):
        answers = (targets[b] != -100).nonzero().flatten()
        assert answers.numel() == pairs
        first_question = int(answers.min())
        for pos in answers.tolist():
            key = int(tokens[b, pos])
            assert nr.KEY0 <= key < nr.VALUE0
            where = [i for i in (tokens[b, :first_question] == key).nonzero().flatten().tolist()]
            assert len(where) == 1                               # the key was stated once, before
            assert int(tokens[b, where[0] + 1]) == int(targets[b, pos]) == int(tokens[b, pos + 1])
            assert pos - where[0] > window                       # out of NSA's window
        # filler is never a key or a value
        rest = torch.ones(length, dtype=torch.bool)
        rest[answers] = rest[answers + 1] = False
        stated = (tokens[b, :first_question] < nr.FILLER0).nonzero().flatten()
        rest[stated] = False
        assert bool((tokens[b][rest] >= nr.FILLER0).all())


def test_refuses_a_length_without_room():
    with pytest.raises(ValueError, match="length"):
        nr.make_batch(1, 48, 8, 32, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("attention, task", [("dense", "recall"), ("nsa", "recall"), ("nsa", "find")])
def test_short_run_writes_its_curve(tmp_path, monkeypatch, attention, task):
    out = tmp_path / "r.json"
    monkeypatch.setattr("sys.argv", ["nsa_recall", str(out), "--attention", attention, "--task", task, "--steps", "2",
                                     "--eval-every", "1", "--eval-batch", "4", "--batch", "2", "--hidden", "32",
                                     "--pairs", "4", "--length", "64", "--window", "16"])
    nr.main()
    run = json.loads(out.read_text())["runs"][attention]
    assert [p["step"] for p in run["curve"]] == [1, 2]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in run["curve"])
    if attention == "nsa":
        assert set(run["ablations"]) == {"without_cmp", "without_slc", "without_win"}


def test_find_puts_one_value_beyond_the_window_and_asks_for_it():
    length, window = 96, 32
    tokens, targets = nr.make_find_batch(16, length, window, torch.Generator().manual_seed(1))
    for b in range(16):
        values = ((tokens[b] >= nr.VALUE0) & (tokens[b] < nr.FILLER0)).nonzero().flatten()
        assert values.numel() == 1 and int(values[0]) < length - 1 - window
        assert int(tokens[b, -1]) == nr.KEY0
        assert int(targets[b, -1]) == int(tokens[b, values[0]])
        assert bool((targets[b, :-1] == -100).all())


def test_each_ablation_zeroes_exactly_its_branch_gate(monkeypatch):
    import argparse

    from sparsa.nn import NativeSparseAttention
    args = argparse.Namespace(block=16, stride=8, sel_block=16, n_select=4, window=16, model_window=None, hidden=32,
                              layers=2, length=64)
    torch.manual_seed(0)
    model = nr.build_model(nr.model_config("nsa", args), nr.VOCAB, pad_id=nr.FILLER0, bos_id=nr.FILLER0,
                           eos_id=nr.FILLER0)
    layers = [m for m in model.modules() if isinstance(m, NativeSparseAttention)]
    x = torch.randn(1, 5, 32)
    seen = []
    # while an ablation is active, record every layer's gates (heads x branches) on some input
    monkeypatch.setattr(nr, "accuracy", lambda *a: seen.append(
        [torch.sigmoid(layer.gate_proj(x)).view(1, 5, -1, 3) for layer in layers]) or 0.5)
    out = nr.branch_ablations(model, None, None)
    assert out == {"without_cmp": 0.5, "without_slc": 0.5, "without_win": 0.5}
    for i, gates in enumerate(seen):
        for g in gates:
            assert bool((g[..., i] == 0).all())
            assert bool((g[..., [j for j in range(3) if j != i]] > 0).all())
    # the hooks are gone afterwards
    assert bool((torch.sigmoid(layers[0].gate_proj(x)) > 0).all())


def test_gate_bias_sets_every_heads_starting_gates():
    import argparse

    from sparsa.nn import NativeSparseAttention
    args = argparse.Namespace(block=16, stride=8, sel_block=16, n_select=4, window=16, model_window=None, hidden=32,
                              layers=2, length=64, gate_bias=[-4.0, 0.0, 1.0])
    model = nr.build_model(nr.model_config("nsa", args), nr.VOCAB, pad_id=nr.FILLER0, bos_id=nr.FILLER0,
                           eos_id=nr.FILLER0)
    for layer in [m for m in model.modules() if isinstance(m, NativeSparseAttention)]:
        assert layer.gate_proj.bias.view(layer.heads, 3).tolist() == [[-4.0, 0.0, 1.0]] * layer.heads
