"""sparsa bench nsa-train: ordinary mistakes exit with code 2 and a message naming the option,
before any model is built, timed or summarized (no traceback)."""
import json
import os
from pathlib import Path

import pytest
import torch

from sparsa.bench import nsa_train
from sparsa.bench.nsa_train import main, table

from .test_nsa_train import RECIPE   # the same tiny NSA recipe


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Any timing or summarizing that starts fails the test: the checks must come first."""
    def started(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(nsa_train, "run_speed", started)
    monkeypatch.setattr(nsa_train, "summarize", started)


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(RECIPE)
    return p


def _run_dir(path):
    path.mkdir()
    (path / "log.jsonl").write_text(json.dumps({"step": 1, "tokens": 1000, "loss": 2.0, "tokens_per_s": 9.0}) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    return _run_dir(tmp_path / "dense"), _run_dir(tmp_path / "nsa")


def _error(capsys, argv, option):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {option}" in err and "Traceback" not in err
    return err


def _unwritable(tmp_path):
    """A file path that cannot be created: its directory would lie under a regular file."""
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile" / "x.json"


# ---------------------------------------------------------------------------------------- speed

def test_speed_missing_recipe(capsys, tmp_path):
    err = _error(capsys, ["speed", "--recipe", tmp_path / "nonexist.toml", "--out", tmp_path / "s.json"], "--recipe")
    assert "no such file" in err


def test_speed_bad_recipe(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nhidden_size = 0\n")
    err = _error(capsys, ["speed", "--recipe", bad, "--out", tmp_path / "s.json"], "--recipe")
    assert "model.hidden_size" in err


def test_speed_unknown_device(capsys, recipe, tmp_path):
    _error(capsys, ["speed", "--recipe", recipe, "--device", "foo", "--out", tmp_path / "s.json"], "--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_speed_cuda_without_cuda(capsys, recipe, tmp_path):
    err = _error(capsys, ["speed", "--recipe", recipe, "--device", "cuda", "--out", tmp_path / "s.json"], "--device")
    assert "cuda" in err


@pytest.mark.parametrize("option", ["--train-context", "--decode-context"])
@pytest.mark.parametrize("value", ["-5", "0", "-1"])
def test_speed_non_positive_context(capsys, recipe, tmp_path, option, value):
    _error(capsys, ["speed", "--recipe", recipe, option, value, "--out", tmp_path / "s.json"], option)


def test_speed_non_positive_context_among_good_ones(capsys, recipe, tmp_path):
    _error(capsys, ["speed", "--recipe", recipe, "--train-context", "128", "--train-context", "0",
                    "--out", tmp_path / "s.json"], "--train-context")


def test_speed_unwritable_out(capsys, recipe, tmp_path):
    _error(capsys, ["speed", "--recipe", recipe, "--out", _unwritable(tmp_path)], "--out")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc here")
def test_speed_out_in_proc(capsys, recipe, tmp_path):
    _error(capsys, ["speed", "--recipe", recipe, "--out", "/proc/x.json"], "--out")


def test_speed_out_is_a_directory(capsys, recipe, tmp_path):
    _error(capsys, ["speed", "--recipe", recipe, "--out", tmp_path], "--out")


def test_speed_good_arguments_reach_the_timing(monkeypatch, recipe, tmp_path):
    seen = {}
    monkeypatch.setattr(nsa_train, "run_speed", lambda r, out, **kw: seen.update(out=out, **kw))
    out = tmp_path / "new" / "s.json"
    main(["speed", "--recipe", str(recipe), "--device", "cpu", "--train-context", "64", "--out", str(out)])
    assert seen["out"] == str(out) and seen["train_contexts"] == [64] and seen["device"] == "cpu"


# ------------------------------------------------------------------------------------ summarize

@pytest.mark.parametrize("option", ["--dense", "--nsa"])
def test_summarize_missing_run_dir(capsys, runs, tmp_path, option):
    args = {"--dense": runs[0], "--nsa": runs[1], option: tmp_path / "nonexist"}
    _error(capsys, ["summarize", *[x for kv in args.items() for x in kv], "--out", tmp_path / "o.json"], option)


def test_summarize_run_dir_without_log(capsys, runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, ["summarize", "--dense", empty, "--nsa", runs[1], "--out", tmp_path / "o.json"], "--dense")
    assert "log.jsonl" in err


def test_summarize_same_dir_twice(capsys, runs, tmp_path):
    _error(capsys, ["summarize", "--dense", runs[0], "--nsa", f"{runs[0]}{os.sep}", "--out", tmp_path / "o.json"],
           "--nsa")


def test_summarize_speed_not_json(capsys, runs, tmp_path):
    bad = tmp_path / "afile"
    bad.write_text("not json\n")
    _error(capsys, ["summarize", "--dense", runs[0], "--nsa", runs[1], "--speed", bad, "--out", tmp_path / "o.json"],
           "--speed")


def test_summarize_speed_wrong_json(capsys, runs, tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text("[1, 2]\n")
    _error(capsys, ["summarize", "--dense", runs[0], "--nsa", runs[1], "--speed", bad, "--out", tmp_path / "o.json"],
           "--speed")


def test_summarize_missing_speed(capsys, runs, tmp_path):
    err = _error(capsys, ["summarize", "--dense", runs[0], "--nsa", runs[1], "--speed", tmp_path / "nonexist.json",
                          "--out", tmp_path / "o.json"], "--speed")
    assert "no such file" in err


def test_summarize_unwritable_out(capsys, runs, tmp_path):
    _error(capsys, ["summarize", "--dense", runs[0], "--nsa", runs[1], "--out", _unwritable(tmp_path)], "--out")


def test_summarize_unwritable_plot(capsys, runs, tmp_path):
    _error(capsys, ["summarize", "--dense", runs[0], "--nsa", runs[1], "--out", tmp_path / "o.json",
                    "--plot", _unwritable(tmp_path).with_suffix(".png")], "--plot")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc here")
@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_summarize_output_in_proc(capsys, runs, tmp_path, option):
    paths = {"--out": tmp_path / "o.json", option: f"/proc/x{'.png' if option == '--plot' else '.json'}"}
    _error(capsys, ["summarize", "--dense", runs[0], "--nsa", runs[1], *[x for kv in paths.items() for x in kv]],
           option)


def test_summarize_out_is_required(capsys, runs):
    # no default: it would overwrite the committed benchmarks/results/nsa_training.json
    _error(capsys, ["summarize", "--dense", runs[0], "--nsa", runs[1]], "the following arguments are required: --out")


def test_summarize_good_arguments_write(monkeypatch, capsys, runs, tmp_path):
    monkeypatch.undo()  # the real summarize
    speed = tmp_path / "s.json"
    speed.write_text(json.dumps({"device": "cpu", "rows": [{"pass": "decode", "speedup": 1.23456}]}))
    out = tmp_path / "new" / "o.json"
    main(["summarize", "--dense", str(runs[0]), "--nsa", str(runs[1]), "--speed", str(speed), "--out", str(out)])
    assert json.loads(out.read_text())["speed"]["device"] == "cpu"
    assert '"speedup": 1.23' in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- table

@pytest.mark.parametrize("lengths", [[], [4096], [4096, 8192]])
def test_table_separator_matches_header(lengths):
    run = {"tokens": 2e6, "final_loss": 1.5, "train_tokens_per_s": 1000.0,
           "average": {str(L): 0.5 for L in lengths}}
    lines = table({"runs": {"dense": run, "nsa": {**run, "final_loss": None}}}).splitlines()
    cells = [line.strip().strip("|").split("|") for line in lines]
    assert len({len(c) for c in cells}) == 1 and len(cells[0]) == 4 + len(lengths)
    assert all(c.strip() == "---" for c in cells[1])
