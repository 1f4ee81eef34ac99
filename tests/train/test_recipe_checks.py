"""Recipe values `sparsa train` cannot run with are refused before training, naming the key."""
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from sparsa.train.config import CARD_LENGTHS, config_from_dict, load_recipe  # noqa: E402

from ..test_train import TOY, _one_thread  # noqa: E402, F401

ROOT = Path(__file__).parents[2]
CPU_RECIPE = ROOT / "recipes" / "sparsa-tiny-cpu.toml"
NAN, INF = math.nan, math.inf


def toy(**over) -> dict:
    d = json.loads(json.dumps(TOY))
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d


@pytest.mark.parametrize("over, match", [
    ({"card": {"tasks": ["nope"]}}, "card.tasks: unknown task 'nope'"),
    ({"card": {"tasks": []}}, "card.tasks: is empty"),
    ({"card": {"lengths": [999999]}}, r"card.lengths: \[999999\] exceed model.max_position_embeddings \(1024\)"),
    ({"card": {"lengths": []}}, "card.lengths: is empty"),
    ({"card": {"lengths": [512, 512]}}, "card.lengths: lists a length twice"),
    ({"card": {"lengths": [64, 512]}}, "card.lengths: 64 is shorter than every card task needs"),
    ({"card": {"tasks": ["niah_single", "story_retrieval"], "lengths": [256]}},
     "card.tasks: task 'story_retrieval' needs at least 512 tokens, more than every card length"),
    ({"card": {"lengths": [256]}}, r"card.tasks \(unset: every task\): task 'story_retrieval' needs at least 512"),
    ({"card": {"samples": 0}}, "card.samples: must be >= 1"),
    ({"card": {"batch_size": 0}}, "card.batch_size: must be >= 1"),
    ({"eval": {"samples": 0}}, "eval.samples: must be >= 1"),
    ({"eval": {"batch_size": 0}}, "eval.batch_size: must be >= 1"),
    ({"eval": {"tasks": ["nope"]}}, "eval.tasks: unknown task 'nope'"),
    ({"eval": {"every": -5}}, "eval.every: must be >= 0"),
])
def test_card_and_eval_settings_are_checked_before_training(over, match):
    with pytest.raises(ValueError, match="^" + match):
        config_from_dict(toy(**over))


def test_unset_card_lengths_are_the_defaults_within_the_model_context():
    assert config_from_dict(toy()).card_lengths() == [1024]  # TOY: max_position_embeddings 1024
    assert config_from_dict({}).card_lengths() == list(CARD_LENGTHS)
    small = toy(model={"max_position_embeddings": 512}, data={"curriculum": [[0, 256]]})
    with pytest.raises(ValueError, match="^card.lengths: unset, and none of the default lengths"):
        config_from_dict(small)
    small["card"] = {"lengths": [256, 512]}
    assert config_from_dict(small).card_lengths() == [256, 512]


@pytest.mark.parametrize("over, match", [
    ({"data": {"lm_max_files": 0}}, "data.lm_max_files: must be >= 1"),
    ({"data": {"lm_max_files": -1}}, "data.lm_max_files: must be >= 1"),
    ({"data": {"num_workers": -1}}, "data.num_workers: must be >= 0"),
])
def test_data_counts_that_would_hang_or_fail_later_are_refused(over, match):
    with pytest.raises(ValueError, match="^" + match):
        config_from_dict(toy(**over))


@pytest.mark.parametrize("over, match", [
    ({"model": {"init_std": 0.0}}, "model.init_std: must be a finite number > 0, got 0.0"),
    ({"model": {"init_std": -0.02}}, "model.init_std: must be a finite number > 0"),
    ({"model": {"init_std": NAN}}, "model.init_std: must be a finite number > 0, got nan"),
    ({"model": {"init_std": INF}}, "model.init_std: must be a finite number > 0, got inf"),
    ({"model": {"rope_theta": 0.0}}, "model.rope_theta: must be a finite number > 0"),
    ({"model": {"rope_theta": NAN}}, "model.rope_theta: must be a finite number > 0, got nan"),
    ({"model": {"rms_norm_eps": 0.0}}, "model.rms_norm_eps: must be a finite number > 0"),
    ({"optim": {"lr": NAN}}, "optim.lr: must be a finite number > 0, got nan"),
    ({"optim": {"lr": INF}}, "optim.lr: must be a finite number > 0, got inf"),
    ({"optim": {"lr": 0.0}}, "optim.lr: must be a finite number > 0"),
    ({"optim": {"eps": 0.0}}, "optim.eps: must be a finite number > 0"),
    ({"optim": {"weight_decay": -0.1}}, "optim.weight_decay: must be a finite number >= 0"),
    ({"optim": {"grad_clip": -1.0}}, "optim.grad_clip: must be a finite number > 0"),
    ({"optim": {"grad_clip": 0.0}}, r"optim.grad_clip: must be a finite number > 0 \(.*0 would zero every update"),
    ({"optim": {"beta1": 1.0}}, r"optim.beta1: must be a number in \[0, 1\), got 1.0"),
    ({"optim": {"beta1": -0.1}}, r"optim.beta1: must be a number in \[0, 1\)"),
    ({"optim": {"beta2": 1.5}}, r"optim.beta2: must be a number in \[0, 1\)"),
    ({"optim": {"min_lr_ratio": 1.5}}, r"optim.min_lr_ratio: must be a number in \[0, 1\]"),
    ({"optim": {"min_lr_ratio": NAN}}, r"optim.min_lr_ratio: must be a number in \[0, 1\], got nan"),
    ({"optim": {"warmup_steps": -1}}, "optim.warmup_steps: must be >= 0"),
    ({"data": {"curriculum": [[0.0]]}}, r"data.curriculum\[0\]: a stage must be \[start_fraction, seq_len\]"),
    ({"data": {"curriculum": [[0.0, 128, 1]]}}, r"data.curriculum\[0\]: a stage must be"),
    ({"data": {"curriculum": [[0.0, 128], [0.5, 256.7]]}},
     r"data.curriculum\[1\]: the sequence length must be a whole number, got 256.7"),
    ({"data": {"curriculum": []}}, "data.curriculum: must be a list of"),
    ({"data": {"length_fraction": [0.5]}}, "data.length_fraction: must be"),
    ({"data": {"length_fraction": [0.2, 0.5, 1.0]}}, "data.length_fraction: must be"),
    ({"data": {"length_fraction": [0.6, 0.4]}}, "data.length_fraction: must be"),
    ({"data": {"length_fraction": [0.0, 1.0]}}, "data.length_fraction: must be"),
    ({"data": {"length_fraction": [0.5, 1.5]}}, "data.length_fraction: must be"),
    ({"data": {"length_fraction": [NAN, 1.0]}}, "data.length_fraction: must be"),
    ({"data": {"task_weights": {"niah_single": -1.0}}}, "data.task_weights.niah_single: must be a finite number >= 0"),
    ({"data": {"task_weights": {"niah_single": NAN}}}, "data.task_weights.niah_single: must be a finite number >= 0"),
    ({"data": {"task_weights": {"nope": 1.0}}}, "data.task_weights.nope: unknown task 'nope'"),
    ({"data": {"answer_weight": NAN}}, "data.answer_weight: must be a finite number >= 0"),
])
def test_out_of_range_recipe_numbers_are_refused_naming_the_key(over, match):
    with pytest.raises(ValueError, match="^" + match):
        config_from_dict(toy(**over))


def test_a_malformed_curriculum_is_named_before_the_nsa_geometry_reads_it():
    d = toy(model={"attention": "nsa", "nsa": {"block": 16, "stride": 8, "sel_block": 32, "n_select": 4,
                                                "window": 64}},
            data={"curriculum": [[0.0]]})
    with pytest.raises(ValueError, match=r"^data.curriculum\[0\]: a stage must be"):
        config_from_dict(d)


def test_valid_edge_values_are_accepted():
    cfg = config_from_dict(toy(optim={"beta1": 0.0, "weight_decay": 0.0, "min_lr_ratio": 1.0},
                               data={"length_fraction": [1.0, 1.0], "curriculum": [[0, 128.0], [0.5, 256]],
                                     "task_weights": {"niah_single": 0.0, "niah_multikey": 1.0}},
                               eval={"every": 0, "tasks": []},
                               card={"tasks": ["niah_single"], "lengths": [128]}))
    assert cfg.card_lengths() == [128]


def test_card_evaluates_each_task_only_at_the_lengths_it_fits():
    from sparsa.train.card import card_grid

    grid = card_grid(["niah_single", "story_retrieval", "niah_multikey", "story_filter"], [128, 256, 512])
    assert grid == [(["niah_single"], [128, 256, 512]), (["story_retrieval", "story_filter"], [512]),
                    (["niah_multikey"], [256, 512])]


def test_empty_out_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sparsa.cli import app
    from sparsa.train.loop import train
    from sparsa.train.run import run

    monkeypatch.chdir(tmp_path)
    for out in ("", "  "):
        with pytest.raises(ValueError, match="^--out: empty path"):
            run(CPU_RECIPE, out, progress=False)
        with pytest.raises(ValueError, match="^out: empty path"):
            train(config_from_dict(toy()), out, progress=False)
    r = CliRunner().invoke(app, ["train", "--recipe", str(CPU_RECIPE), "--out", ""])
    assert r.exit_code == 2 and "error: --out: empty path" in r.output
    assert list(tmp_path.iterdir()) == []


def test_shipped_cpu_recipe_trains_exports_and_writes_its_card(tmp_path):
    from sparsa.train.run import run

    cfg, _ = load_recipe(CPU_RECIPE)
    assert cfg.card.tasks is None and cfg.card_lengths() == [256, 512]
    # the shipped recipe's card (every task at 256 and 512), cut to two steps and one sample per cell
    recipe = tmp_path / "short.toml"
    recipe.write_text(f'base = {json.dumps(str(CPU_RECIPE))}\nsteps = 2\n[card]\nsamples = 1\n')
    res = run(recipe, tmp_path / "o", device="cpu", progress=False)
    assert res.trained and res.card_complete, res.message
    rows = [json.loads(x) for x in (tmp_path / "o" / "card_eval.jsonl").read_text().splitlines()]
    cells = {(r["task"], r["length"]) for r in rows}
    assert ("story_retrieval", 512) in cells and ("story_retrieval", 256) not in cells
    assert ("niah_single", 256) in cells and ("niah_single", 512) in cells
    assert "| story_retrieval |" in (tmp_path / "o" / "model" / "README.md").read_text()


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recipes").rglob("*.toml")))
def test_every_shipped_recipe_loads_and_passes_its_checks(path):
    cfg, text = load_recipe(ROOT / path)
    assert cfg.name and text
    if cfg.model.attention == "nsa":
        from sparsa.train.model import nsa_table

        assert nsa_table(cfg.model)["method"] == "nsa"
