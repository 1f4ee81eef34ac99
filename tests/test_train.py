"""Training code at toy scale on the CPU: loss goes down, resume is exact, export loads offline."""
import json
import math
import shutil

import pytest
import torch

pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from sparsa.train.config import config_from_dict, load_recipe  # noqa: E402
from sparsa.train.loop import CHECKPOINT, LOG, lr_at, train  # noqa: E402

TOY = {
    "name": "toy", "seed": 0, "steps": 8, "log_every": 1, "ckpt_every": 3,
    "model": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 32,
              "intermediate_size": 128, "max_position_embeddings": 1024},
    "data": {"curriculum": [[0, 128], [0.5, 256]], "tokens_per_step": 512, "micro_batch_tokens": 256,
             "num_workers": 0, "lm_max_files": 2, "lm_fraction": 0.3,
             "task_weights": {"niah_single": 1.0, "niah_multikey": 1.0}},
    "optim": {"lr": 3e-3, "warmup_steps": 1},
    "eval": {"every": 0},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls: one thread is faster, and much faster on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def toy(**over):
    d = json.loads(json.dumps(TOY))
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    return config_from_dict(d)


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / LOG).read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    res = train(toy(), out, progress=False)
    return out, res


def test_loss_decreases_and_log(straight):
    out, res = straight
    assert res.finished and res.step == 8
    losses = _losses(out)
    assert len(losses) == 8
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) / 2 < losses[0] - 0.3
    rows = [json.loads(x) for x in (out / LOG).read_text().splitlines()]
    assert rows[-1]["seq_len"] == 256 and rows[1]["seq_len"] == 128
    assert "answer_token_acc" in rows[-1] and "tokens_per_s" in rows[-1]


def test_resume_is_exact(straight, tmp_path):
    out_a, res_a = straight
    out = tmp_path / "b"
    first = train(toy(), out, max_steps=4, progress=False)
    assert not first.finished and first.step == 4 and first.stopped_by == "max_steps"
    with pytest.raises(FileExistsError, match="--resume"):
        train(toy(), out, progress=False)
    with pytest.raises(ValueError, match="optim.lr"):
        train(toy(optim={"lr": 1e-3}), out, resume=True, progress=False)
    # a changed number of loader workers does not change the batches
    res = train(toy(data={"num_workers": 1}), out, resume=True, progress=False)
    assert res.finished and res.step == 8
    sa, sb = res_a.model.state_dict(), res.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    ca = torch.load(out_a / CHECKPOINT, weights_only=False)
    cb = torch.load(out / CHECKPOINT, weights_only=False)
    assert ca["step"] == cb["step"] == 8 and ca["tokens"] == cb["tokens"]
    for pa, pb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        torch.testing.assert_close(pa["exp_avg_sq"], pb["exp_avg_sq"], rtol=0, atol=0)
    steps = [json.loads(x)["step"] for x in (out / LOG).read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, 9))
    assert _losses(out) == pytest.approx(_losses(out_a), rel=0, abs=0)


def test_time_limit_stops_with_checkpoint(tmp_path):
    res = train(toy(), tmp_path, time_limit_s=0.0, progress=False)
    assert res.step == 1 and res.stopped_by == "time_limit"
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["step"] == 1


def test_export_loads_offline(straight, tmp_path):
    from sparsa.eval.tokenization import encode_for_model
    from sparsa.train.export import export_hf

    _, res = straight
    d = export_hf(res.model, "default", tmp_path / "m", rope_theta=500000.0, recipe_text="x = 1\n", card="# toy\n")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (d / f).is_file(), f
    m = transformers.AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    assert m.config.rope_parameters["rope_theta"] == 500000.0 if hasattr(m.config, "rope_parameters") else True
    text = "def f(x):\n    return 42  # special number\n"
    ids = tok(text)["input_ids"]
    assert ids == encode_for_model(res.tokenizer, text) and ids[0] == tok.bos_token_id
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = res.model.float()(input_ids=x).logits
        got = m.float()(input_ids=x).logits
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    with pytest.raises(ValueError, match="exceeds"):
        export_hf(res.model, "default", tmp_path / "small", rope_theta=1e4, max_bytes=1000)


def test_lr_schedule_and_recipe_errors(tmp_path):
    cfg = toy(steps=100, optim={"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1})
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 99) == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ValueError, match="model.nope: unknown recipe key"):
        config_from_dict({"model": {"nope": 1}})
    with pytest.raises(ValueError, match="unknown task"):
        config_from_dict({"data": {"task_weights": {"needle": 1.0}}})
    with pytest.raises(ValueError, match="num_kv_heads"):
        config_from_dict({"model": {"num_heads": 4, "num_kv_heads": 3}})
    p = tmp_path / "r.yaml"
    p.write_text("x")
    with pytest.raises(ValueError, match="toml or .json"):
        load_recipe(p)


@pytest.mark.parametrize("recipe,match", [
    ({"steps": "ten"}, "steps: expected an integer, got 'ten'"),
    ({"steps": 2.5}, "steps: expected an integer, got 2.5"),        # would fail only after training began
    ({"compile": 1}, "compile: expected true or false"),
    ({"optim": {"lr": True}}, "optim.lr: expected a number"),
    ({"data": {"tokens_per_step": "x"}}, "data.tokens_per_step: expected an integer"),
    ({"data": {"curriculum": [[0, "1k"]]}}, r"data.curriculum\[0\]\[1\]: expected a number"),
    ({"data": {"task_weights": {"niah_single": "high"}}}, "data.task_weights.niah_single: expected a number"),
    ({"model": {"num_heads": 0}}, "model.num_heads: must be >= 1"),   # not a ZeroDivisionError
    ({"data": {"micro_batch_tokens": 0}}, "data.micro_batch_tokens: must be >= 1"),
])
def test_recipe_values_of_the_wrong_type_are_refused_naming_the_key(recipe, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(recipe)
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1       # an int is a number


def test_a_recipe_with_a_base_states_only_its_differences(tmp_path):
    (tmp_path / "parent.json").write_text(json.dumps(TOY))
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.toml"
    child.write_text('base = "../parent.json"\nname = "child"\n[model]\nnum_layers = 3\n'
                     '[data.task_weights]\nniah_single = 2.0\n')
    cfg, text = load_recipe(child)
    # tables merge key by key: the base's other model and task-weight keys stay
    assert cfg.name == "child" and cfg.model.num_layers == 3 and cfg.model.hidden_size == 64
    assert cfg.data.task_weights == {"niah_single": 2.0, "niah_multikey": 1.0}
    # the text is the resolved recipe, so a run's saved copy does not need the base file
    assert config_from_dict(json.loads(text)).to_dict() == cfg.to_dict()
    from sparsa.train.config import recipe_suffix
    assert recipe_suffix(text, child) == ".json" and recipe_suffix("name = 'x'", child) == ".toml"


@pytest.mark.parametrize("base,match", [("self.toml", "inherits from itself"), ("nope.toml", "no such file"),
                                        (3, "expected the path")])
def test_bad_recipe_bases_are_refused_naming_the_key(tmp_path, base, match):
    p = tmp_path / "self.toml"
    p.write_text(f"base = {json.dumps(base)}\n")
    with pytest.raises((ValueError, FileNotFoundError), match=f"base: .*{match}"):
        load_recipe(p)


def test_recipe_bases_must_not_form_a_cycle(tmp_path):
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ValueError, match="base: .*inherits from itself"):
        load_recipe(tmp_path / "a.toml")


def test_shipped_recipe_fits_the_size_limit():
    from pathlib import Path

    from sparsa.train.loop import estimate_flops
    from sparsa.train.model import build_model, count_parameters

    cfg, text = load_recipe(Path(__file__).parents[1] / "recipes" / "sparsa-tiny.toml")
    assert cfg.name == "sparsa-tiny" and "[model]" in text
    with torch.device("meta"):
        m = build_model(cfg.model, 8192, 0, 1, 2)
    n = count_parameters(m)["total"]
    assert 2 * n <= 25 * 2**20
    assert cfg.model.head_dim == 64 and cfg.model.num_heads % cfg.model.num_kv_heads == 0
    assert max(L for _, L in cfg.data.curriculum) == 8192
    assert estimate_flops(cfg, 8192)["tokens"] > 1e8


def test_cli_train(tmp_path):
    from typer.testing import CliRunner

    from sparsa.cli import app

    recipe = tmp_path / "toy.json"
    recipe.write_text(json.dumps({**TOY, "steps": 2}))
    r = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--no-card"])
    assert r.exit_code == 0, r.output
    assert "exported" in r.output and (tmp_path / "o" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "o" / "model" / "README.md").read_text().startswith("# toy")
    r = CliRunner().invoke(app, ["train", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--resume" in r.output
    shutil.rmtree(tmp_path / "o")
    # a recipe with a base: the run and the exported model keep the resolved recipe, as JSON
    based = tmp_path / "based.toml"
    based.write_text('base = "toy.json"\nname = "based"\n')
    r = CliRunner().invoke(app, ["train", "--recipe", str(based), "--out", str(tmp_path / "b"), "--no-card"])
    assert r.exit_code == 0, r.output
    for saved in (tmp_path / "b" / "recipe.json", tmp_path / "b" / "model" / "based.json"):
        assert json.loads(saved.read_text())["name"] == "based"


def test_examples_are_deterministic_and_well_formed():
    import random

    from sparsa.train.data import StreamDataset, _with_repeats, lm_tokens, load_train_tokenizer

    cfg = toy(data={"lm_fraction": 0.0, "curriculum": [[0, 512]], "tokens_per_step": 512})
    tok = load_train_tokenizer("default")
    ds = StreamDataset(cfg, tok, lm_tokens(tok, 2))
    ex = ds.make_example(3, 0)
    assert torch.equal(ex.ids, ds.make_example(3, 0).ids) and not torch.equal(ex.ids, ds.make_example(3, 1).ids)
    assert ex.ids.shape == (513,) and ex.weights.shape == ex.answer.shape == (512,)
    pos = ex.answer.nonzero()[:, 0]
    assert ex.task_id >= 0 and len(pos) >= 3 and (pos.diff() == 1).all()
    assert (ex.weights[pos] == cfg.data.answer_weight).all() and (ex.weights[~ex.answer] <= 1).all()
    answer = tok.decode(ex.ids[pos + 1].tolist(), skip_special_tokens=False)
    assert answer.endswith("<|eos|>") and answer.startswith(" ")
    assert tok.decode(ex.ids[:pos[0] + 1].tolist()).endswith("Answer:")
    text = list(range(1000, 1300))
    out = _with_repeats(random.Random(0), text)
    assert len(out) == 300 and out[:16] == text[:16] and out != text


def test_task_param_ranges_are_drawn_per_instance():
    from sparsa.train.data import StreamDataset, lm_tokens, load_train_tokenizer

    cfg = toy(data={"lm_fraction": 0.0, "curriculum": [[0, 512]], "tokens_per_step": 512,
                    "task_weights": {"variable_tracking": 1.0},
                    "task_params": {"variable_tracking": {"hops": [1, 3], "chains": 1}}})
    tok = load_train_tokenizer("default")
    ds = StreamDataset(cfg, tok, lm_tokens(tok, 2))
    seen = set()
    for i in range(24):
        ex = ds.make_example(0, i)
        pos = ex.answer.nonzero()[:, 0]
        answer = tok.decode(ex.ids[pos + 1].tolist(), skip_special_tokens=True)
        seen.add(len(answer.split(",")))       # hops + 1 names in the answer
    assert seen == {2, 3, 4}
    assert ds.make_example(0, 5).ids.equal(ds.make_example(0, 5).ids)
    for bad in ([3, 1], [1], [1.5, 2]):
        with pytest.raises((ValueError, TypeError), match="hops"):
            toy(data={"task_params": {"variable_tracking": {"hops": bad}}}).validate()


def test_instances_too_long_for_the_drawn_length_retry_or_fall_back():
    from sparsa.train.data import LM_TASK_ID, StreamDataset, lm_tokens, load_train_tokenizer

    # 4 chains of 5 lines need ~300 tokens: more than a 512-token sequence at 30% of its room
    cfg = toy(data={"lm_fraction": 0.0, "curriculum": [[0, 512]], "tokens_per_step": 512,
                    "length_fraction": [0.3, 0.3], "task_weights": {"variable_tracking": 1.0},
                    "task_params": {"variable_tracking": {"hops": 4, "chains": 4}}})
    tok = load_train_tokenizer("default")
    ds = StreamDataset(cfg, tok, lm_tokens(tok, 2))
    ex = ds.make_example(0, 0)
    pos = ex.answer.nonzero()[:, 0]
    assert ex.task_id != LM_TASK_ID and len(tok.decode(ex.ids[pos + 1].tolist(), skip_special_tokens=True).split(",")) == 5
    # and a sequence too short for the task at any length is plain language modelling
    cfg = toy(data={"lm_fraction": 0.0, "curriculum": [[0, 320]], "tokens_per_step": 320,
                    "task_weights": {"variable_tracking": 1.0},
                    "task_params": {"variable_tracking": {"hops": 4, "chains": 4}}})
    ex = StreamDataset(cfg, tok, lm_tokens(tok, 2)).make_example(0, 0)
    assert ex.task_id == LM_TASK_ID and not ex.answer.any() and ex.ids.shape == (321,)


def test_sigterm_checkpoints_and_stops(tmp_path):
    import os
    import signal
    import threading
    import time

    log = tmp_path / LOG

    def stop_after_two_steps():
        for _ in range(600):
            if log.exists() and log.read_text().count('"loss"') >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=stop_after_two_steps)
    t.start()
    res = train(toy(steps=200), tmp_path, progress=False)
    t.join()
    assert res.stopped_by == "SIGTERM" and 2 <= res.step < 200
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["step"] == res.step
    assert signal.getsignal(signal.SIGTERM) is before


def test_rank_shares_cover_each_step_once():
    from sparsa.train.data import rank_micro_batches, step_layout

    cfg = toy()
    for step in (0, 7):
        _, n, mb = step_layout(cfg.data, step, cfg.steps)
        for world in (1, 3, 5):
            shares = [rank_micro_batches(cfg.data, step, cfg.steps, r, world) for r in range(world)]
            flat = [i for share in shares for batch in share for i in batch]
            assert flat == list(range(n))
            assert all(len(batch) <= mb for share in shares for batch in share)
    assert rank_micro_batches(cfg.data, 7, cfg.steps, 0, 3) == []  # 2 sequences, 3 processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reduction_order_tol(steps: int, n: int) -> float:
    """Relative tolerance between two fp32 trainings that differ only in summation order.

    Summing n fp32 terms in another order changes the sum by about eps * sqrt(n) of the terms'
    magnitude (rounding errors of size eps/2 per addition, independent signs: a random walk).
    A step's gradient sums over its n tokens, so its relative error is about eps * sqrt(n), and
    so is the Adam update's (m / sqrt(v) is scale-free: a relative change of the gradient is one
    of the update). The steps' errors add up over `steps` updates; a factor 10 covers their
    growth through the later steps' forward and backward passes. For the toy run (4 steps, 512
    tokens): 10 * 4 * 1.2e-7 * 22.6 = 1.1e-4, where measured runs differ by at most 2e-6.
    """
    return 10 * steps * torch.finfo(torch.float32).eps * math.sqrt(n)


def _assert_same_training(one: dict, other: dict, init: dict, *, steps: int, lr: float, n: int) -> None:
    """Two runs' weights agree to fp32 reduction-order error, and that check is not vacuous.

    Per tensor, the distance between the runs is at most `_reduction_order_tol` times the
    distance the weights moved from `init`. Per element, the bound is that tolerance times
    steps * lr (Adam moves an element by about lr per step at most), except for a few elements:
    where a gradient element's sum cancels to nearly zero its relative error is unbounded and
    Adam's normalisation scales it up to an lr-sized step, so a handful of elements (at most 1 in
    10,000) may differ by up to 2 * lr per step.
    """
    tol = _reduction_order_tol(steps, n)
    atol = tol * steps * lr
    assert one.keys() == other.keys() == init.keys()
    for name, w in one.items():
        moved, diff = w - init[name], other[name] - w
        # not vacuous: every tensor moved on average by over 100 times the per-element tolerance
        assert moved.abs().mean() > max(0.1 * lr, 100 * atol), (name, float(moved.abs().mean()), atol)
        assert diff.norm() <= tol * moved.norm(), (name, float(diff.norm() / moved.norm()), tol)
        outliers = int((diff.abs() > atol).sum())
        assert outliers <= w.numel() // 10_000, (name, outliers, float(diff.abs().max()), atol)
        assert diff.abs().max() <= 2 * lr * steps, name


def test_same_training_check_allows_reduction_order_error_only():
    # one embedding value off by 3.3e-6 (as two gloo runs can be) passes; a real change does not
    g = torch.Generator().manual_seed(0)
    lr, steps, n = 3e-3, 4, 512
    init = {"embed": 0.02 * torch.randn(1024, 64, generator=g), "norm": torch.ones(64)}
    move = {k: lr * steps * (torch.rand(v.shape, generator=g) - 0.5) for k, v in init.items()}
    one = {k: init[k] + move[k] for k in init}
    close = {k: v * (1 + 1e-7) for k, v in one.items()}
    close["embed"][3, 5] = 1e-3
    one["embed"][3, 5] = 1e-3 - 3.3e-6
    assert not torch.allclose(close["embed"], one["embed"], rtol=1e-4, atol=1e-6)
    _assert_same_training(one, close, init, steps=steps, lr=lr, n=n)
    off = {k: v.clone() for k, v in one.items()}
    off["norm"][0] += 1e-4
    with pytest.raises(AssertionError, match="norm"):
        _assert_same_training(one, off, init, steps=steps, lr=lr, n=n)
    with pytest.raises(AssertionError, match="embed"):  # a run that did not move proves nothing
        _assert_same_training(init, init, init, steps=steps, lr=lr, n=n)


def test_data_parallel_run_matches_one_process(tmp_path):
    import os
    import subprocess
    import sys

    # 3 processes on the CPU (gloo) for 3 steps: at 128 tokens (steps 1-2) the shares are 1, 1
    # and 2 sequences; at 256 (step 3) process 0 has none and still takes part in the gradient
    # sum. Then one process resumes the run for step 4.
    recipe = tmp_path / "toy.json"
    card = {"tasks": ["niah_single", "niah_multikey"], "lengths": [256, 384], "samples": 2, "batch_size": 2}
    recipe.write_text(json.dumps({**TOY, "steps": 4, "card": card}))
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3", "--master-port", str(port),
           "-m", "sparsa", "train", "--recipe", str(recipe), "--out", str(tmp_path / "ddp"), "--device", "cpu",
           "--max-steps", "3", "--no-card"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "stopped at step 3/4" in r.stdout
    assert torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=False)["step"] == 3
    train(toy(steps=4), tmp_path / "ddp", resume=True, device="cpu", progress=False)
    train(toy(steps=4), tmp_path / "one", device="cpu", progress=False)
    one = torch.load(tmp_path / "one" / CHECKPOINT, weights_only=False)
    ddp = torch.load(tmp_path / "ddp" / CHECKPOINT, weights_only=False)
    assert ddp["step"] == one["step"] == 4 and ddp["tokens"] == one["tokens"]
    # the first 3 steps really ran on 3 ranks, the 4th on one
    assert ddp["devices"] == ["3 x cpu", "cpu"] and one["devices"] == ["cpu"]
    init = train(toy(steps=4), tmp_path / "init", max_steps=0, device="cpu", progress=False).model.state_dict()
    _assert_same_training(one["model"], ddp["model"], init, steps=4, lr=TOY["optim"]["lr"],
                          n=TOY["data"]["tokens_per_step"])
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert len(l1) == len(l2) == 4  # one log row per step: only process 0 writes
    # the log rounds losses to 5 decimals: abs 1e-5 covers that rounding
    assert l2 == pytest.approx(l1, rel=_reduction_order_tol(4, TOY["data"]["tokens_per_step"]), abs=1e-5)
    # the finished run resumed by 3 processes: process 0 exports, each evaluates a share of the
    # card's 4 cells (one process gets none), process 0 writes the card from all the rows
    r = subprocess.run(cmd[:-3] + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "model card complete" in r.stdout
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "card_eval.jsonl").read_text().splitlines()]
    assert sorted((x["task"], x["length"], x["sample"]) for x in rows) == sorted(
        (t, L, i) for t in card["tasks"] for L in card["lengths"] for i in range(2))
    card_text = (tmp_path / "ddp" / "model" / "README.md").read_text()
    assert "niah_multikey" in card_text
    assert "device: 3 x cpu, then cpu," in card_text  # what trained, not what evaluated the card


def _stop_worker(rank: int, port: int, reasons: list, out: str) -> None:
    import torch.distributed as dist

    from sparsa.train.loop import _agree_on_stop

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    got = [_agree_on_stop(pair[rank], torch.device("cpu")) for pair in reasons]
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(got, f)


def test_processes_agree_on_when_to_stop(tmp_path):
    import torch.multiprocessing as mp

    # (process 0's reason, process 1's reason): process 0's wins, else any other's
    reasons = [(None, None), (None, "SIGTERM"), ("time_limit", "SIGINT"), ("time_limit", None)]
    port = _free_port()
    mp.spawn(_stop_worker, args=(port, reasons, str(tmp_path / "r")), nprocs=2)
    want = [None, "SIGTERM", "time_limit", "time_limit"]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"r.{rank}").read_text()) == want


def test_cpu_recipe_is_small():
    from pathlib import Path

    from sparsa.train.model import build_model, count_parameters

    cfg, _ = load_recipe(Path(__file__).parents[1] / "recipes" / "sparsa-tiny-cpu.toml")
    cfg.validate()
    with torch.device("meta"):
        m = build_model(cfg.model, 8192, 0, 1, 2)
    assert count_parameters(m)["total"] < 1_000_000
    assert max(L for _, L in cfg.data.curriculum) <= 512 and cfg.data.tokens_per_step <= 1024
    assert cfg.data.num_workers == 0 and cfg.precision == "fp32" and cfg.eval.every == 0


def test_resume_without_a_checkpoint_says_it_starts_over(tmp_path):
    with pytest.warns(UserWarning, match="resume: no checkpoint in .* training starts at step 0"):
        res = train(toy(), tmp_path / "fresh", resume=True, max_steps=1, progress=False)
    assert res.step == 1
