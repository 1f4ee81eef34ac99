"""Per-head patterns: PerHead against each method run on the whole layer, the error scoring on
planted structure, the pattern file, the search on a tiny model and the CLI."""
from __future__ import annotations

import json

import pytest
import torch

import sparsa
from sparsa.methods.per_head import PerHead
from sparsa.patterns import (candidate_spec, choose, head_errors, load_head_patterns, read_patterns, summary,
                             write_patterns)

from ._util import rel_err


def _qkv(h: int = 4, hkv: int = 2, n: int = 96, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, x, n, d, generator=g) for x in (h, hkv, hkv))


def test_per_head_matches_each_method_on_its_heads():
    q, k, v = _qkv()
    # fixed budgets: each head's result does not depend on which other heads run with it
    stream = sparsa.get_method("streaming", sink=4, window=16, mode="prefill")
    window = sparsa.get_method("sliding_window", window=24)
    ph = PerHead(heads=[stream, None, window, {"method": "streaming", "sink": 4, "window": 16, "mode": "prefill"}])
    out, st = ph(q, k, v)
    full = {"s": stream(q, k, v)[0], "w": window(q, k, v)[0], "d": sparsa.get_method("dense")(q, k, v)[0]}
    for h, key in enumerate("sdws"):
        assert rel_err(out[:, h], full[key][:, h]) < 1e-5, h
    # heads 0 and 3 share one spec (a split KV group each); the dense head has compression 1
    assert [len(hs) for _, hs in ph.groups()] == [2, 1, 1]
    assert st.per_head[1] == pytest.approx(1.0) and st.per_head[0] > 2 and st.compression > 1.5
    assert st.dense == pytest.approx(4 * 96 * 97 / 2)


def test_per_head_whole_kv_groups_and_all_dense():
    q, k, v = _qkv(h=6, hkv=3)
    w = {"method": "sliding_window", "window": 8}
    out, _ = PerHead(heads=[w, w, None, None, w, w])(q, k, v)
    ref = sparsa.get_method("sliding_window", window=8)(q, k, v)[0]
    dense = sparsa.get_method("dense")(q, k, v)[0]
    for h in (0, 1, 4, 5):
        assert rel_err(out[:, h], ref[:, h]) < 1e-5
    assert rel_err(out[:, 2:4], dense[:, 2:4]) < 1e-5
    out, st = PerHead(heads=["dense"] * 6)(q, k, v)
    assert rel_err(out, dense) < 1e-6 and st.compression == pytest.approx(1.0)


def test_per_head_bad_specs():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="heads"):
        PerHead(heads=[])
    with pytest.raises(ValueError, match=r"heads\[1\].*decode-only"):
        PerHead(heads=[None, "quest"])
    with pytest.raises(TypeError, match=r"heads\[0\]"):
        PerHead(heads=[3])
    with pytest.raises(ValueError, match=r"heads\[0\].*'method'"):
        PerHead(heads=[{"compression": 4}])
    with pytest.raises(ValueError, match="no_such_method"):
        PerHead(heads=["no_such_method"])
    with pytest.raises(ValueError, match="compression"):
        PerHead(heads=[None], compression=4)
    with pytest.raises(ValueError, match="3 specs for a layer with 4 query heads"):
        PerHead(heads=[None] * 3)(q, k, v)


def test_errors_find_planted_structure():
    """Head 0 reads one far column, head 1 only its own neighbourhood: streaming fits head 1
    and misses head 0's column, which vertical-slash keeps."""
    n, d = 512, 16
    g = torch.Generator().manual_seed(3)
    k = torch.randn(1, 2, n, d, generator=g) * 0.1
    v = torch.randn(1, 2, n, d, generator=g)
    q = torch.zeros(1, 2, n, d)
    col = 300
    k[0, 0, :, 0] = 0
    k[0, 0, col, 0] = 1.0
    q[0, 0, :, 0] = 60.0                       # every query of head 0 from ``col`` on reads key ``col``
    v[0, 0, col] *= 10                         # (rows before it average noise: small outputs)
    pos = torch.arange(n, dtype=torch.float32)
    ang = pos[:, None] * torch.tensor([0.05, 0.031])[None]
    # head 1: q_i . k_j = 4000 (cos(0.05 (i - j)) + cos(0.031 (i - j))), sharply peaked at j = i
    k[0, 1] = 0
    k[0, 1, :, 0:2], k[0, 1, :, 2:4] = torch.cos(ang) * 63.2, torch.sin(ang) * 63.2
    q[0, 1] = k[0, 1]
    # fewer forced lines than MInference's 30 + 100, which alone would fill a 512-token budget
    cands = [candidate_spec("streaming", 8.0),
             {"method": "vertical_slash", "compression": 8.0, "init_tokens": 4, "local_diagonals": 8}]
    errs = head_errors(q, k, v, cands)
    assert errs.shape == (2, 2)
    assert errs[0, 0] > 0.5 and errs[0, 1] < 0.05       # streaming misses the column, VS keeps it
    assert errs[1, 0] < 0.05                             # streaming fits the local head
    assert choose(errs)[0] == 1


def test_candidate_specs():
    assert candidate_spec("streaming", 10) == {"method": "streaming", "compression": 10.0, "mode": "prefill"}
    with pytest.raises(ValueError, match="decode-only"):
        candidate_spec("h2o", 10)
    with pytest.raises(ValueError, match="dense"):
        candidate_spec("dense", 1)


def test_file_roundtrip_and_errors(tmp_path):
    cands = [candidate_spec("streaming", 4.0), candidate_spec("block_sparse", 4.0)]
    layers = {1: {"heads": [cands[0], cands[1]], "errors": [[0.1, 0.2], [0.3, 0.1]]}, 0: {"heads": [None, cands[0]]}}
    path = write_patterns(tmp_path / "p.json", layers, compression=4, candidates=cands, calibration={"task": "x"})
    assert not (tmp_path / "p.json.tmp").exists()
    doc = read_patterns(path)
    assert list(doc["layers"]) == ["0", "1"] and summary(doc["layers"]) == {"dense": 1, "streaming": 2, "block_sparse": 1}
    plans = load_head_patterns(path)
    assert set(plans) == {0, 1} and all(isinstance(p, PerHead) for p in plans.values())
    assert [m is None for m in plans[0]._methods] == [True, False]
    with pytest.raises(FileNotFoundError, match="path"):
        read_patterns(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    for content, msg in (("{", "not JSON"), (json.dumps({"format": "x"}), "format"),
                         (json.dumps({"format": "sparsa-head-patterns", "version": 9}), "version"),
                         (json.dumps({"format": "sparsa-head-patterns", "version": 1, "layers": []}), "layers")):
        bad.write_text(content)
        with pytest.raises(ValueError, match=msg):
            read_patterns(bad)


transformers = pytest.importorskip("transformers")


def test_search_on_a_model_then_apply():
    from sparsa.integrations.hf.search import search_head_patterns

    from .test_hf_models import greedy, logits, prompt, tiny_model

    model = tiny_model("llama")
    ids = prompt(1, 80)
    layers, specs = search_head_patterns(model, ids, compression=1.0, progress=False)
    assert sorted(layers) == [0, 1] and [s["method"] for s in specs] == ["streaming", "vertical_slash", "block_sparse"]
    assert all(len(e["heads"]) == 4 and len(e["errors"][0]) == 3 for e in layers.values())
    # at compression 1 every candidate is dense attention: errors ~0 and the model is unchanged
    assert max(max(r) for e in layers.values() for r in e["errors"]) < 1e-4
    ref = logits(model, ids)
    plans = {i: PerHead(heads=e["heads"]) for i, e in layers.items()}
    with sparsa.apply(model, layers=plans):
        assert rel_err(logits(model, ids), ref) < 1e-4
    # at compression 4 the heads split between methods and generation runs
    layers, _ = search_head_patterns(model, prompt(1, 160), compression=4.0, progress=False)
    for e in layers.values():
        errs = torch.tensor(e["errors"])
        assert [h["method"] for h in e["heads"]] == [["streaming", "vertical_slash", "block_sparse"][i]
                                                     for i in errs.argmin(1).tolist()]
    with sparsa.apply(model, layers={i: PerHead(heads=e["heads"]) for i, e in layers.items()}):
        out = greedy(model, prompt(1, 160), new=4)
    assert out.sequences.shape == (1, 164) and all(torch.isfinite(s).all() for s in out.scores)
    with pytest.raises(ValueError, match="input_ids"):
        search_head_patterns(model, ids[0], progress=False)


def test_cli_search_patterns(tmp_path):
    from typer.testing import CliRunner

    from sparsa.cli import app

    out = tmp_path / "p.json"
    r = CliRunner().invoke(app, ["search-patterns", "--out", str(out), "--length", "512", "--device", "cpu",
                                 "--task", "niah_single"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and sum(summary(read_patterns(out)["layers"]).values()) == 8 * 4
    assert len(load_head_patterns(out)) == 8
    r = CliRunner().invoke(app, ["search-patterns", "--out", str(out.with_name("q.json")), "--candidate", "nope"])
    assert r.exit_code == 2 and "--candidate" in r.output
    # a finished pattern file is never overwritten
    before = out.read_bytes()
    r = CliRunner().invoke(app, ["search-patterns", "--out", str(out)])
    assert r.exit_code == 2 and "exists" in r.output and out.read_bytes() == before
