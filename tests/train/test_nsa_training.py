"""`sparsa train` with ``model.attention = "nsa"``: trains, resumes, exports, loads, generates; bad recipes."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from sparsa.train.config import config_from_dict  # noqa: E402
from sparsa.train.export import export_hf  # noqa: E402
from sparsa.train.loop import CHECKPOINT, train  # noqa: E402

from ..test_train import (TOY, _assert_same_training, _free_port, _losses, _one_thread,  # noqa: E402, F401
                          _reduction_order_tol)

NSA = {"block": 16, "stride": 8, "sel_block": 32, "n_select": 4, "window": 64, "n_forced_init": 1,
       "n_forced_local": 1}


def nsa_recipe(**over) -> dict:
    d = json.loads(json.dumps(TOY))
    d["model"].update(attention="nsa", nsa=dict(NSA))
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("nsa")
    return out, train(config_from_dict(nsa_recipe()), out, device="cpu", progress=False)


def test_nsa_model_trains_with_falling_loss(trained):
    out, res = trained
    from sparsa.integrations.hf.nsa_model import NSADecoderAttention, NSALlamaForCausalLM

    assert isinstance(res.model, NSALlamaForCausalLM)
    attn = [m for m in res.model.modules() if isinstance(m, NSADecoderAttention)]
    assert len(attn) == TOY["model"]["num_layers"]
    assert attn[0].attn.cfg.sel_block == 32 and attn[0].attn.compress_k is not None
    losses = _losses(out)
    assert len(losses) == TOY["steps"] and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < losses[0] - 0.3
    # the learned parts of NSA are trained too: gates and compression maps moved from their init
    ck = torch.load(out / CHECKPOINT, weights_only=False)
    init = train(config_from_dict(nsa_recipe()), out.parent / "nsa_init", max_steps=0, device="cpu",
                 progress=False).model.state_dict()
    for key in ("model.layers.0.self_attn.attn.gate_proj.weight", "model.layers.1.self_attn.attn.compress_k.w1"):
        assert (ck["model"][key] - init[key]).abs().mean() > 1e-4, key


def _greedy_no_cache(model, ids, n):
    x = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, model(x, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


def test_export_load_generate_identically(trained, tmp_path):
    _, res = trained
    from sparsa.eval.models import load_model

    d = export_hf(res.model, "default", tmp_path / "m", rope_theta=TOY["model"].get("rope_theta", 500000.0))
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "sparsa_nsa" and cfg["sparse_attention"]["method"] == "nsa"
    assert cfg["sparse_attention"]["sel_block"] == 32
    loaded, tok = load_model(d, device="cpu")
    # the export stores bfloat16: compare with the trained model rounded the same way
    ref = res.model.to(torch.bfloat16).to(torch.float32).eval()
    for (n1, p1), (n2, p2) in zip(sorted(ref.state_dict().items()), sorted(loaded.state_dict().items())):
        assert n1 == n2 and torch.equal(p1, p2), n1
    ids = torch.tensor([tok.encode("def main(argv):\n    return sorted(set(argv))\n" * 6)])
    with torch.no_grad():
        a = loaded.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        b = ref.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        la, lb = loaded(ids).logits, ref(ids).logits
    assert torch.equal(a, b)
    assert torch.equal(la, lb)
    # generate() with its cache (compressed tokens and decode steps) equals recomputing every step
    assert torch.equal(a, _greedy_no_cache(ref, ids, 12))


def test_padded_batch_equals_rows_alone(trained):
    _, res = trained
    model = res.model.eval()
    g = torch.Generator().manual_seed(1)
    long, short = torch.randint(10, 500, (1, 90), generator=g), torch.randint(10, 500, (1, 61), generator=g)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 29, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :29] = 0
    with torch.no_grad():
        both = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, min_new_tokens=5,
                              pad_token_id=0)
        one = model.generate(short, max_new_tokens=5, do_sample=False, min_new_tokens=5, pad_token_id=0)
        first = model.generate(long, max_new_tokens=5, do_sample=False, min_new_tokens=5, pad_token_id=0)
        lb = model(batch, attention_mask=mask).logits[1, 29:]
        ls = model(short).logits[0]
    assert torch.equal(both[1, -5:], one[0, -5:]) and torch.equal(both[0, -5:], first[0, -5:])
    assert torch.allclose(lb, ls, rtol=0, atol=1e-5)  # same math, row alone vs in a batch


def test_sparsa_apply_refuses_a_native_nsa_model(trained):
    import sparsa

    with pytest.raises(ValueError, match="Native Sparse Attention"):
        sparsa.apply(trained[1].model, "vertical_slash")


def test_resuming_with_the_other_attention_is_refused(trained, tmp_path):
    out, _ = trained
    dense = json.loads(json.dumps(TOY))
    with pytest.raises(ValueError, match="model.attention: the checkpoint .* nsa attention .* dense"):
        train(config_from_dict({**dense, "steps": 9}), out, resume=True, device="cpu", progress=False)
    d_out = tmp_path / "dense"
    train(config_from_dict({**dense, "steps": 1}), d_out, device="cpu", progress=False)
    with pytest.raises(ValueError, match="model.attention: the checkpoint .* dense attention .* nsa"):
        train(config_from_dict(nsa_recipe(steps=2)), d_out, resume=True, device="cpu", progress=False)


@pytest.mark.parametrize("nsa,match", [
    ({"sel_block": 48, "stride": 16, "block": 16}, r"model.nsa.sel_block: 48 must divide every sequence length"),
    ({"block": 24, "stride": 8}, r"model.nsa.block: 24 must divide"),
    ({"window": 512}, r"model.nsa.window: 512 is longer than the longest training sequence \(256"),
    ({"stride": 5}, r"model.nsa.stride"),
    ({"compress": "max"}, r"model.nsa.compress"),
    ({"n_select": 1}, r"model.nsa.n_select"),
    ({"bogus": 1}, r"model.nsa.bogus: unknown recipe key"),
    ({"gate_bias": [0.0, 1.0]}, r"model.nsa.gate_bias: expected three numbers"),
    ({"gate_bias": [0.0, 1.0, float("nan")]}, r"model.nsa.gate_bias: expected three finite numbers"),
    ({"gate_bias": "high"}, r"model.nsa.gate_bias: expected a list"),
    ({"separate_kv": "yes"}, r"model.nsa.separate_kv"),
])
def test_bad_nsa_recipes_are_refused_naming_the_key(nsa, match):
    d = nsa_recipe()
    d["model"]["nsa"].update(nsa)
    with pytest.raises(ValueError, match=match):
        config_from_dict(d)


def test_gate_bias_sets_every_layers_starting_gates_and_survives_export(tmp_path):
    from sparsa.nn import NativeSparseAttention
    from sparsa.train.model import build_model

    cfg = config_from_dict(nsa_recipe(model={"nsa": {**NSA, "gate_bias": [-4.0, 2.0, 0.5]}}))
    model = build_model(cfg.model, 300, 0, 1, 2)
    layers = [m for m in model.modules() if isinstance(m, NativeSparseAttention)]
    assert len(layers) == cfg.model.num_layers
    for layer in layers:      # (head, branch) layout: the three logits repeated per head
        assert layer.gate_proj.bias.tolist() == [-4.0, 2.0, 0.5] * layer.heads
    # a trained bias, not the starting one, is what a saved model loads with
    with torch.no_grad():
        layers[0].gate_proj.bias.add_(1.0)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m")
    got = [m for m in loaded.modules() if isinstance(m, NativeSparseAttention)][0].gate_proj.bias
    assert torch.equal(got, layers[0].gate_proj.bias)


def test_separate_kv_gives_each_branch_its_own_projections(tmp_path):
    from sparsa.nn import NativeSparseAttention
    from sparsa.train.model import build_model

    cfg = config_from_dict(nsa_recipe(model={"nsa": {**NSA, "separate_kv": True}}))
    model = build_model(cfg.model, 300, 0, 1, 2)
    layer = next(m for m in model.modules() if isinstance(m, NativeSparseAttention))
    m = cfg.model
    assert layer.separate_kv and layer.k_proj.out_features == 3 * m.num_kv_heads * m.head_dim
    model.save_pretrained(tmp_path / "m")
    assert next(x for x in type(model).from_pretrained(tmp_path / "m").modules()
                if isinstance(x, NativeSparseAttention)).separate_kv


def test_unknown_attention_is_refused():
    d = nsa_recipe()
    d["model"]["attention"] = "linear"
    with pytest.raises(ValueError, match="model.attention: must be one of dense, nsa"):
        config_from_dict(d)


def test_nsa_data_parallel_run_matches_one_process(tmp_path):
    # 2 processes on the CPU (gloo) with the same global batch as one process: weights agree to
    # fp32 reduction-order error (see _reduction_order_tol)
    steps = 3
    recipe = tmp_path / "nsa.json"
    recipe.write_text(json.dumps(nsa_recipe(steps=steps)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "sparsa", "train", "--recipe", str(recipe), "--out", str(tmp_path / "ddp"), "--device", "cpu",
           "--no-card"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cfg = config_from_dict(nsa_recipe(steps=steps))
    train(cfg, tmp_path / "one", device="cpu", progress=False)
    one = torch.load(tmp_path / "one" / CHECKPOINT, weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=False)
    assert ddp["step"] == one["step"] == steps and ddp["devices"] == ["2 x cpu"]
    init = train(cfg, tmp_path / "init", max_steps=0, device="cpu", progress=False).model.state_dict()
    _assert_same_training(one["model"], ddp["model"], init, steps=steps, lr=TOY["optim"]["lr"],
                          n=TOY["data"]["tokens_per_step"])
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert l2 == pytest.approx(l1, rel=_reduction_order_tol(steps, TOY["data"]["tokens_per_step"]), abs=1e-5)


def test_frontier_sweep_runs_a_native_nsa_model_as_its_own_baseline(trained, tmp_path):
    from sparsa.eval.models import load_model
    from sparsa.eval.sweep import SweepConfig, read_results, run_sweep

    d = export_hf(trained[1].model, "default", tmp_path / "m", rope_theta=500000.0)
    model, tok = load_model(d, device="cpu")
    cfg = SweepConfig(model=str(d), methods=["vertical_slash", "snapkv"], compressions=[2.0], lengths=[160],
                      tasks=["niah_single"], samples=3, batch_size=3)
    with pytest.warns(UserWarning, match="only its own attention"):
        run_sweep(cfg, tmp_path / "out", model=model, tokenizer=tok, progress=False)
    rows = read_results(tmp_path / "out")
    assert sorted(r["sample"] for r in rows) == [0, 1, 2]
    assert {r["method"] for r in rows} == {"dense"} and {r["n_tokens"] for r in rows} != {0}


@pytest.mark.parametrize("nsa,dense", [("sparsa-tiny-nsa", "sparsa-tiny-nsa-dense"),
                                       ("sparsa-tiny-nsa-cpu", "sparsa-tiny-nsa-cpu-dense")])
def test_recipe_twins_differ_only_in_attention(nsa, dense):
    from pathlib import Path

    from sparsa.train.config import load_recipe

    root = Path(__file__).resolve().parents[2] / "recipes"
    a, _ = load_recipe(root / f"{nsa}.toml")
    b, _ = load_recipe(root / f"{dense}.toml")
    assert (a.model.attention, b.model.attention) == ("nsa", "dense") and (a.name, b.name) == (nsa, dense)
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        del d["name"], d["model"]["attention"]
    assert da == db


def test_a_checkpoint_from_before_the_attention_key_resumes(tmp_path):
    # a dense run whose saved recipe has no model.attention / model.nsa (as older runs) continues
    cfg = config_from_dict({**json.loads(json.dumps(TOY)), "steps": 2})
    train(cfg, tmp_path, max_steps=1, device="cpu", progress=False)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    del ck["recipe"]["model"]["attention"], ck["recipe"]["model"]["nsa"]
    torch.save(ck, tmp_path / CHECKPOINT)
    res = train(cfg, tmp_path, resume=True, device="cpu", progress=False)
    assert res.finished and res.step == 2


def test_nsa_trains_under_bf16_autocast(tmp_path):
    """The GPU recipes train under bf16 autocast: the layer's projections then come out in
    bfloat16 while the residual stream stays float32, and the attention must get one dtype."""
    res = train(config_from_dict(nsa_recipe(steps=2, precision="bf16")), tmp_path, device="cpu", progress=False)
    losses = _losses(tmp_path)
    assert res.model is not None and len(losses) == 2 and all(math.isfinite(x) for x in losses)
