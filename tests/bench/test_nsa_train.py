"""sparsa bench nsa-train: the speed harness runs (CPU, tiny) and the summary reads training runs."""
import json

import pytest
import torch

pytest.importorskip("transformers")

from sparsa.bench.nsa_train import main, run_speed, summarize, table  # noqa: E402

RECIPE = """
name = "t"
steps = 4
[model]
hidden_size = 64
num_layers = 1
num_heads = 2
num_kv_heads = 1
head_dim = 32
intermediate_size = 128
max_position_embeddings = 1024
attention = "nsa"
[model.nsa]
block = 16
stride = 8
sel_block = 32
n_select = 4
window = 64
[data]
curriculum = [[0.0, 128]]
tokens_per_step = 256
micro_batch_tokens = 256
"""


def test_speed_harness_times_both_twins(tmp_path):
    torch.set_num_threads(1)
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "speed.json"
    res = run_speed(recipe, out, train_contexts=[128], decode_contexts=[96], decode_batch=2, decode_steps=2, reps=1,
                    device="cpu")
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(res["rows"]))
    assert saved["parameters"]["nsa"] > saved["parameters"]["dense"]  # gates and compression maps
    step, dec = saved["rows"]
    assert step["pass"] == "train_step" and step["context"] == 128 and step["dense_ms"] > 0 and step["nsa_ms"] > 0
    assert step["speedup"] == pytest.approx(step["dense_ms"] / step["nsa_ms"])
    assert dec["pass"] == "decode" and dec["batch"] == 2 and dec["nsa_tokens_per_s"] > 0
    assert dec["speedup"] == pytest.approx(dec["nsa_tokens_per_s"] / dec["dense_tokens_per_s"])


def _run_dir(path, losses, scores):
    path.mkdir()
    rows = [{"step": 0, "event": "start"}]
    rows += [{"step": i + 1, "tokens": 1000 * (i + 1), "loss": v, "lm_loss": v / 2, "tokens_per_s": 500.0}
             for i, v in enumerate(losses)]
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [json.dumps({"task": t, "length": L, "sample": i, "score": s})
             for (t, L), ss in scores.items() for i, s in enumerate(ss)]
    (path / "card_eval.jsonl").write_text("\n".join(lines) + "\n{\"task\": \"torn")


def test_summary_table_and_plot(tmp_path):
    _run_dir(tmp_path / "d", [3.0, 2.0, 1.5], {("niah_single", 4096): [1, 1], ("niah_multikey", 4096): [0, 1]})
    _run_dir(tmp_path / "n", [3.0, 1.8, 1.2], {("niah_single", 4096): [1, 0], ("niah_multikey", 4096): [1, 1]})
    speed = tmp_path / "s.json"
    speed.write_text(json.dumps({"device": "cpu", "rows": []}))
    out, png = tmp_path / "res.json", tmp_path / "loss.png"
    res = summarize(tmp_path / "d", tmp_path / "n", speed, out, png)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert png.stat().st_size > 1000
    d, n = res["runs"]["dense"], res["runs"]["nsa"]
    assert d["average"]["4096"] == pytest.approx(0.75) and n["average"]["4096"] == pytest.approx(0.75)
    assert n["scores"]["niah_single"]["4096"] == 0.5 and d["tokens"] == 3000
    assert d["final_loss"] == pytest.approx(6.5 / 3) and n["loss_curve"][-1] == [3000, 1.2]
    text = table(res)
    assert "avg score 4K" in text and "| dense | 0.003M | 2.167 | 0.75 | 500 |" in text and "| nsa |" in text
    with pytest.raises(FileNotFoundError, match="no training log"):
        summarize(tmp_path / "d", tmp_path / "missing", None, out)


def test_cli_rejects_bad_counts(tmp_path):
    with pytest.raises(SystemExit):
        main(["speed", "--out", str(tmp_path / "x.json"), "--reps", "0"])
