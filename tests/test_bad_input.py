"""Bad arguments to the public entry points: each gives a clear error naming the argument.

Python calls raise ValueError / TypeError / IndexError / FileNotFoundError with the argument's
name in the message; CLI commands print ``error: ...`` naming the option and exit with code 2,
without a traceback.
"""
import pytest
import torch

import sparsa


def qkv(b: int = 1, h: int = 4, hkv: int = 2, n: int = 48, d: int = 16):
    """q (b, h, n, d), k and v (b, hkv, n, d), standard normal."""
    return torch.randn(b, h, n, d), torch.randn(b, hkv, n, d), torch.randn(b, hkv, n, d)


# ---------------------------------------------------------------- sparsa.attention: non-finite inputs

@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa", "triton"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("method", sparsa.list_methods())
def test_non_finite_input_is_rejected_for_every_method(method, arg, value, backend):
    t = dict(zip("qkv", qkv()))
    t[arg][0, 1, 7, 3] = value
    with pytest.raises(ValueError, match=rf"^{arg}: holds .*(NaN|infinite)"):
        sparsa.attention(t["q"], t["k"], t["v"], method=method, compression=2, backend=backend)


def test_non_finite_check_can_be_skipped():
    q, k, v = qkv()
    v[0, 0, 5] = float("nan")
    out = sparsa.attention(q, k, v, method="dense", check_finite=False)
    assert out.isnan().any()  # SDPA semantics: NaN values reach the rows that read them


@pytest.mark.parametrize("arg", ["q", "k", "v"])
def test_meta_tensor_is_rejected(arg):
    t = dict(zip("qkv", qkv()))
    t[arg] = t[arg].to("meta")
    with pytest.raises(ValueError, match=rf"^{arg}: .*meta"):
        sparsa.attention(t["q"], t["k"], t["v"], method="quest", compression=2)
    with pytest.raises(ValueError, match=rf"^{arg}: .*meta"):
        sparsa.attention(t["q"], t["k"], t["v"], method="quest", compression=2, check_finite=False)


# ---------------------------------------------------------------- CLI: error message, exit code 2, no traceback

def _read_only_dir(tmp_path):
    """A directory nothing can be written in (a chmod 555 one, or /sys when running as root)."""
    import os
    from pathlib import Path

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK):
        return ro
    sys_dir = Path("/sys")
    if sys_dir.is_dir() and not os.access(sys_dir, os.W_OK):
        return sys_dir
    try:  # root may pass os.access on a read-only mount: try it
        (sys_dir / "sparsa-probe").mkdir()
    except OSError:
        return sys_dir
    pytest.skip("no read-only directory on this machine")


def _rows_file(tmp_path) -> str:
    """A JSON-lines results file of one dense row."""
    import json

    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"model": "m", "task": "niah_single", "length": 128, "sample": 0, "method": "dense",
                             "phase": "dense", "target": None, "compression": 1.0, "mode": "aware", "score": 1.0,
                             "exact": 1}) + "\n")
    return str(p)


def _pattern_file(folder, heads: int = 4, layer: int = 0, method: str = "streaming") -> str:
    """A head-pattern file ``folder/p.json``: one layer of ``heads`` heads (sparsa-tiny has 4)."""
    from sparsa.patterns import write_patterns

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"method": method, "compression": 2.0}
    return str(write_patterns(folder / "p.json", {layer: {"heads": [spec] * heads}}, compression=2.0,
                              candidates=[spec], calibration={}))


RECIPE = "recipes/sparsa-tiny.toml"
NO_CUDA = not torch.cuda.is_available()

_SMALL_EVAL = ["-m", "streaming", "-c", "2", "-n", "512", "-t", "niah_single", "--samples", "1", "--out", "{tmp}/e",
               "--no-report"]

CLI_CASES = [
    # (id, argv with {tmp} / {file} / {ro} placeholders, text the message must hold)
    ("train-out-under-file", ["train", "--recipe", RECIPE, "--out", "{file}/sub"], "--out: .*regular file"),
    ("train-out-is-file", ["train", "--recipe", RECIPE, "--out", "{file}"], "--out: .*not a directory"),
    ("train-out-read-only", ["train", "--recipe", RECIPE, "--out", "{ro}/run"], "--out: cannot write"),
    ("train-device-bogus", ["train", "--recipe", RECIPE, "--out", "{tmp}/o", "--device", "gpu"], "--device: 'gpu'"),
    ("train-device-index", ["train", "--recipe", RECIPE, "--out", "{tmp}/o", "--device", "cuda:99"], "--device: cuda:99"),
    ("train-recipe-missing", ["train", "--recipe", "{tmp}/none.toml", "--out", "{tmp}/o"], "recipe"),
    ("train-recipe-corrupt", ["train", "--recipe", "{bad_toml}", "--out", "{tmp}/o"], "recipe"),
    ("train-recipe-not-a-table", ["train", "--recipe", "{scalar_toml}", "--out", "{tmp}/o"],
     "model: expected a table, got int"),
    ("search-device-index", ["search-patterns", "--out", "{tmp}/p.json", "--device", "cuda:99"], "--device: cuda:99"),
    ("search-dense-candidate", ["search-patterns", "--out", "{tmp}/p.json", "-c", "dense"], "--candidate: dense is the reference"),
    ("search-decode-candidate", ["search-patterns", "--out", "{tmp}/p.json", "-c", "h2o"], "--candidate: h2o is a decode method"),
    ("search-unknown-candidate", ["search-patterns", "--out", "{tmp}/p.json", "-c", "nope"], "--candidate: .*unknown method"),
    ("demo-kv-heads", ["demo", "--heads", "8", "--kv-heads", "3"], "--kv-heads: 3 must divide --heads"),
    ("demo-unknown-method", ["demo", "-m", "nope"], "--method: .*unknown method"),
    ("demo-too-large", ["demo", "--heads", "1000000"], "--length, --heads, --kv-heads, --head-dim: .* GiB"),
    ("info-unknown-option", ["info", "--nope"], None),
    ("search-missing-model", ["search-patterns", "--out", "{tmp}/p.json", "--model", "{tmp}/nomodel"], "nomodel"),
    ("eval-device-bogus", ["eval", "--device", "gpu", "--out", "{tmp}/e", "--no-report"], "--device: 'gpu'"),
    ("eval-device-meta", ["eval", "--device", "meta", "--out", "{tmp}/e", "--no-report"], "--device: the 'meta'"),
    ("eval-out-under-file", ["eval", "--out", "{file}/sub", "--no-report"], "out: .*lies under a regular file"),
    ("eval-out-is-file", ["eval", "--out", "{file}", "--no-report"], "out: .*not a directory"),
    ("eval-out-other-sweep", ["eval", "--out", "{other_sweep}", "--no-report"], "out: .*holds a sweep with other model"),
    ("eval-out-config-not-object", ["eval", "--out", "{list_sweep}", "--no-report"], "out: .*not a sweep configuration"),
    ("eval-task-all-and-more", ["eval", "-t", "all", "-t", "niah_single", "--out", "{tmp}/e", "--no-report"],
     "--task: 'all' already means every task"),
    ("eval-patterns-not-json", ["eval", "--patterns", "{file}", "--out", "{tmp}/e", "--no-report"],
     "patterns: .*is not JSON"),
    ("eval-patterns-unknown-method", ["eval", "--patterns", "{pat_nope}", *_SMALL_EVAL], "--patterns: .*unknown method 'nope'"),
    ("eval-patterns-decode-method", ["eval", "--patterns", "{pat_h2o}", *_SMALL_EVAL], "--patterns: .*h2o is a decode"),
    ("eval-patterns-head-count", ["eval", "--patterns", "{pat_2heads}", *_SMALL_EVAL],
     "--patterns: .*layer 0 has 2 head entries; the model has 4 query heads"),
    ("eval-patterns-layer-range", ["eval", "--patterns", "{pat_layer99}", *_SMALL_EVAL],
     "--patterns: .*layer index 99 is out of range"),
    ("eval-patterns-same-name", ["eval", "--patterns", "{pat_a}", "--patterns", "{pat_b}", "--out", "{tmp}/e",
                                 "--no-report"], "patterns: .*have the same name 'p'"),
    ("bench-e2e-decode-method", ["bench", "e2e", "-m", "h2o"], r"--method: \['h2o'\]; choose sparse prefill methods"),
    ("bench-e2e-short-context", ["bench", "e2e", "-n", "8"], "--context: prompt lengths must be ints >= 16"),
    ("bench-e2e-compression-decode", ["bench", "e2e", "--phase", "decode", "--compression", "5"],
     "--compression: sets the target of the random-weight prefill run"),
    ("bench-e2e-profile-without-model", ["bench", "e2e", "--profile"], "--profile: .*needs --model"),
    ("bench-e2e-decode-short-context", ["bench", "e2e", "--phase", "decode", "-n", "8"],
     "--context: must be an int >= "),
    ("search-out-exists", ["search-patterns", "--out", "{file}"], "--out: .*exists; move it away"),
    ("search-out-is-dir", ["search-patterns", "--out", "{tmp}"], "--out: .*is a directory"),
    ("search-out-empty", ["search-patterns", "--out", ""], "--out: empty path"),
    ("search-out-under-file", ["search-patterns", "--out", "{file}/p.json"], "--out: .*regular file"),
    ("search-out-read-only", ["search-patterns", "--out", "{ro}/p.json"], "--out: cannot create"),
    ("search-length-above-context", ["search-patterns", "--out", "{tmp}/p.json", "--length", "1000000",
                                     "-c", "streaming"], "--length: 1000000 exceeds the model's context"),
    ("eval-out-empty", ["eval", "--out", "", "--no-report"], "--out: empty path"),
    ("eval-compression-named-as-option", ["eval", "-c", "0.5", "--out", "{tmp}/e", "--no-report"],
     "--compression: every target must be"),
    ("eval-length-named-as-option", ["eval", "-n", "10", "--out", "{tmp}/e", "--no-report"], "--length: prompt lengths"),
    ("train-out-empty", ["train", "--recipe", RECIPE, "--out", ""], "--out: empty path"),
    ("report-out-empty", ["report", "{rows}", "-o", "", "--bench-dir", ""], "--out: empty path"),
    ("report-bench-dir-missing", ["report", "{rows}", "-o", "{tmp}/r", "--bench-dir", "{tmp}/none"],
     "--bench-dir: .*is not a directory"),
    ("demo-compression-inf", ["demo", "--compression", "inf", "-m", "streaming", "--length", "256"],
     "--compression: must be a finite number"),
    ("demo-unknown-method-once", ["demo", "-m", "nope"], "--method: unknown method"),
    ("cost-param-empty-key", ["cost", "--gpu-cost-per-day", "5", "--plot", "{tmp}/c.png", "--param", "=x"],
     "--param: '=x' is not KEY=VALUE"),
    ("cost-workload-options-named", ["cost", "--gpu-cost-per-day", "5", "--speedup", "2", "--requests-per-day", "100",
                                     "--dense-seconds-per-request", "1", "--output-tokens", "10"],
     "--output-tokens, --dense-ms-per-token: "),
    ("cost-plot-with-context", ["cost", "--gpu-cost-per-day", "5", "--plot", "{tmp}/c.png", "-n", "8192"],
     "--context: the plot spans every measured context"),
    ("cost-plot-with-workload", ["cost", "--gpu-cost-per-day", "5", "--plot", "{tmp}/c.png", "--requests-per-day", "5"],
     "--requests-per-day: a workload needs a speed-up"),
    ("cost-plot-read-only", ["cost", "--gpu-cost-per-day", "5", "--plot", "{ro}/c.png"], "--plot: cannot create"),
    ("cost-bench-dir-is-file", ["cost", "--gpu-cost-per-day", "5", "-m", "vertical_slash", "-n", "8192",
                                "--bench-dir", "{file}"], "--bench-dir: .*is not a directory"),
    ("cost-baseline-unknown", ["cost", "--gpu-cost-per-day", "5", "-m", "vertical_slash", "-n", "8192",
                               "--baseline", "nope"], "--baseline: no complete benchmark rows against 'nope'; the results hold"),
    ("eval-out-model-config", ["eval", "--out", "{model_cfg}", "--no-report"], "--out: .*is not a sweep configuration"),
    ("train-recipe-is-dir", ["train", "--recipe", "{tmp}", "--out", "{tmp}/o"], "recipe: .*is a directory"),
    ("report-out-is-file", ["report", "{rows}", "-o", "{file}", "--bench-dir", ""], "--out: .*not a directory"),
    ("report-out-under-file", ["report", "{rows}", "-o", "{file}/sub", "--bench-dir", ""],
     "--out: .*lies under a regular file"),
]
if NO_CUDA:
    CLI_CASES += [
        ("train-device-cuda", ["train", "--recipe", RECIPE, "--out", "{tmp}/o", "--device", "cuda"], "--device: cuda requested"),
        ("search-device-cuda", ["search-patterns", "--out", "{tmp}/p.json", "--device", "cuda"], "--device: cuda requested"),
        ("eval-device-cuda", ["eval", "--device", "cuda", "--out", "{tmp}/e", "--no-report"], "--device: cuda requested"),
        ("bench-nsa-cpu", ["bench", "nsa"], "bench nsa` needs a CUDA GPU"),
        ("bench-decode-cpu", ["bench", "decode"], "bench decode` needs a CUDA GPU"),
        ("bench-prefill-cpu", ["bench", "prefill"], "needs a CUDA GPU"),
        ("bench-e2e-cpu", ["bench", "e2e"], "needs a CUDA GPU"),
    ]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_arguments_exit_2_with_a_message(argv, message, tmp_path):
    import re

    from typer.testing import CliRunner

    from sparsa.cli import app

    file = tmp_path / "a-file"
    file.write_text("x")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("steps = [unclosed\n")
    scalar_toml = tmp_path / "scalar.toml"
    scalar_toml.write_text("model = 3\n")
    subs = {"{tmp}": str(tmp_path), "{file}": str(file), "{bad_toml}": str(bad_toml), "{scalar_toml}": str(scalar_toml)}
    if any("{rows}" in a for a in argv):
        subs["{rows}"] = _rows_file(tmp_path)
    if any("{other_sweep}" in a or "{list_sweep}" in a or "{model_cfg}" in a for a in argv):
        for name, text in (("model_cfg", '{"model_type": "llama", "hidden_size": 64}'), ("other_sweep", '{"model": "another-model", "seed": 0, "methods": []}'), ("list_sweep", "[1, 2]")):
            (tmp_path / name).mkdir()
            (tmp_path / name / "config.json").write_text(text)
            subs["{" + name + "}"] = str(tmp_path / name)
    if any("{pat_" in a for a in argv):
        subs["{pat_a}"], subs["{pat_b}"] = _pattern_file(tmp_path / "a"), _pattern_file(tmp_path / "b")
        subs["{pat_nope}"] = _pattern_file(tmp_path / "nope", method="nope")
        subs["{pat_h2o}"] = _pattern_file(tmp_path / "h2o", method="h2o")
        subs["{pat_2heads}"] = _pattern_file(tmp_path / "2heads", heads=2)
        subs["{pat_layer99}"] = _pattern_file(tmp_path / "layer99", layer=99)
    if any("{ro}" in a for a in argv):
        subs["{ro}"] = str(_read_only_dir(tmp_path))
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, (r.output, r.exception)
    assert "Traceback" not in r.output
    if message is None:  # click's own usage error
        assert "No such option" in r.output, r.output
    else:
        assert re.search(r"error: .*" + message, r.output), r.output


# ---------------------------------------------------------------- method objects: out-of-range arguments

@pytest.mark.parametrize("context_len, exc", [(-1, ValueError), (0, ValueError), (2.5, TypeError)])
def test_quest_decode_tokens_rejects_bad_context(context_len, exc):
    with pytest.raises(exc, match="^context_len"):
        sparsa.Quest(budget=64).decode_tokens(context_len)


def _h2o_step_inputs():
    m = sparsa.H2O(compression=2)
    q, k, v = qkv(n=20)
    state = m.init_decode(q, k, v)
    k1 = torch.cat([k, torch.randn(1, 2, 1, 16)], 2)
    v1 = torch.cat([v, torch.randn(1, 2, 1, 16)], 2)
    return m, torch.randn(1, 4, 16), k1, v1, state


@pytest.mark.parametrize("case, exc, match", [
    ("state-not-a-state", TypeError, "^state: expected the H2OState"),
    ("q-4d", ValueError, "^q: expected 3 dimensions"),
    ("q-head-dim", ValueError, "^k: head_dim"),
    ("k-too-short", ValueError, "^k: 5 tokens"),
    ("state-of-another-batch", ValueError, r"^state: holds \(batch, kv_heads\)"),
    ("q-dtype", TypeError, "^q: dtype"),
])
def test_h2o_decode_step_misuse(case, exc, match):
    m, q, k, v, state = _h2o_step_inputs()
    args = {"state-not-a-state": (q, k, v, {"positions": state.positions}),
            "q-4d": (q[:, :, None], k, v, state),
            "q-head-dim": (q[..., :8], k, v, state),
            "k-too-short": (q, k[:, :, :5], v[:, :, :5], state),
            "state-of-another-batch": (q.expand(2, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), state),
            "q-dtype": (q.double(), k, v, state)}[case]
    with pytest.raises(exc, match=match):
        m.decode_step(*args)
    m.decode_step(q, k, v, state)  # the well-formed step runs


# ---------------------------------------------------------------- sparsa.apply and its cache: layer indices

@pytest.fixture(scope="module")
def tiny_llama():
    pytest.importorskip("transformers")
    from .test_hf_models import tiny_model

    return tiny_model("llama")


@pytest.mark.parametrize("layers, match", [
    ({2: None}, "layers: layer index 2 is out of range"),
    ({-3: None}, "layers: layer index -3 is out of range"),
    ({0: None, -2: None}, "layers: layer 0 is given twice"),
])
def test_apply_layer_index_out_of_range(tiny_llama, layers, match):
    with pytest.raises(ValueError, match=match):
        sparsa.apply(tiny_llama, "quest", layers=layers)


def test_apply_accepts_negative_layer_index(tiny_llama):
    with sparsa.apply(tiny_llama, "streaming", layers={-1: None}) as h:
        assert [p.prefill is None for p in h.plans] == [False, True]


@pytest.mark.parametrize("layer, exc", [(99, IndexError), (2, IndexError), (-1, IndexError), ("0", TypeError)])
def test_cache_layer_index_out_of_range(tiny_llama, layer, exc):
    from sparsa.integrations.hf import compat

    from .test_hf_models import prompt

    ids = prompt(1, 40)
    with sparsa.apply(tiny_llama, decode=sparsa.Quest(budget=16, page_size=4)) as h:
        cache = h.new_cache()
        with torch.no_grad():
            tiny_llama.generate(ids, max_new_tokens=2, do_sample=False, **{compat.cache_kwarg_name(tiny_llama): cache})
    assert cache.layer_nbytes(1) > 0 and cache.layer_tokens(1).shape == (1, 2)
    with pytest.raises(exc, match="^layer_idx"):
        cache.layer_nbytes(layer)
    with pytest.raises(exc, match="^layer_idx"):
        cache.layer_tokens(layer)


# ---------------------------------------------------------------- a table of public entry points x bad arguments

def _q(*shape, **kw):
    return torch.randn(*shape, **kw)


def _write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BAD_CALLS = [
    # (id, call(tmp_path), exception, message start)
    # sparsa.attention: shapes, dtypes, devices, scale, backend, budgets
    ("attention-q-3d", lambda t: sparsa.attention(_q(2, 8, 16), _q(1, 2, 8, 16), _q(1, 2, 8, 16)), ValueError, "q: expected 4"),
    ("attention-gqa", lambda t: sparsa.attention(_q(1, 4, 8, 16), _q(1, 3, 8, 16), _q(1, 3, 8, 16)), ValueError, "k: kv_heads"),
    ("attention-q-longer", lambda t: sparsa.attention(_q(1, 2, 9, 16), _q(1, 2, 8, 16), _q(1, 2, 8, 16)), ValueError, "q: q_len"),
    ("attention-int-dtype", lambda t: sparsa.attention(*(x.int() for x in qkv())), TypeError, "q: dtype"),
    ("attention-mixed-dtype", lambda t: sparsa.attention(*qkv()[:2], qkv()[2].half()), TypeError, "k, v: dtype"),
    ("attention-not-tensor", lambda t: sparsa.attention([1.0], *qkv()[1:]), TypeError, "q: expected a torch.Tensor"),
    ("attention-scale", lambda t: sparsa.attention(*qkv(), scale=-1.0), ValueError, "scale"),
    ("attention-backend", lambda t: sparsa.attention(*qkv(), backend="gpu"), ValueError, "backend"),
    ("attention-compression-below-1", lambda t: sparsa.attention(*qkv(), method="quest", compression=0.5), ValueError, "compression"),
    ("attention-compression-inf", lambda t: sparsa.attention(*qkv(), method="h2o", compression=float("inf")), ValueError, "compression"),
    ("attention-unknown-method", lambda t: sparsa.attention(*qkv(), method="nope"), ValueError, "method"),
    # sparsa.get_method configs: budgets out of range, wrong types, unknown parameters
    ("quest-budget", lambda t: sparsa.get_method("quest", budget=-1), ValueError, "budget"),
    ("quest-page-size", lambda t: sparsa.get_method("quest", page_size=0), ValueError, "page_size"),
    ("window-zero", lambda t: sparsa.get_method("sliding_window", window=0), ValueError, "window"),
    ("vertical-negative", lambda t: sparsa.get_method("vertical_slash", vertical=-5), ValueError, "vertical"),
    ("block-size-zero", lambda t: sparsa.get_method("block_sparse", block_size=0), ValueError, "block_size"),
    ("snapkv-window-type", lambda t: sparsa.get_method("snapkv", window="x"), TypeError, "window"),
    ("nsa-unknown-param", lambda t: sparsa.get_method("nsa", block_size=64), TypeError, "block_size"),
    # files
    ("patterns-missing", lambda t: sparsa.load_head_patterns(str(t / "none.json")), FileNotFoundError, "path"),
    ("patterns-corrupt", lambda t: sparsa.load_head_patterns(_write(t, "p.json", "{oops")), ValueError, "path"),
    ("patterns-wrong-format", lambda t: sparsa.load_head_patterns(_write(t, "p.json", "[1, 2]")), ValueError, "path"),
    # sparsa.apply
    ("apply-not-a-model", lambda t: sparsa.apply("model"), TypeError, "model"),
    # cache functions
    ("paged-page-size", lambda t: __import__("sparsa.cache").cache.PagedKVCache(1, 2, 16, 0, dtype=torch.float32, device="cpu"),
     ValueError, "page_size"),
    ("paged-dtype", lambda t: __import__("sparsa.cache").cache.PagedKVCache(1, 2, 16, 16, dtype=torch.int32, device="cpu"),
     TypeError, "dtype"),
    ("paged-bounds", lambda t: __import__("sparsa.cache").cache.PagedKVCache(1, 2, 16, 16, dtype=torch.float32, device="cpu",
                                                                              bounds="fp8"), ValueError, "bounds"),
    ("init-cache-lengths", lambda t: __import__("sparsa.methods").methods.init_cache(
        sparsa.H2O(compression=2), *qkv(n=32), lengths=torch.tensor([40])), ValueError, "lengths"),
    ("init-cache-quant", lambda t: __import__("sparsa.methods").methods.init_cache(
        sparsa.H2O(compression=2), *qkv(n=32), quant="int3"), ValueError, "quant"),
    ("init-cache-method", lambda t: __import__("sparsa.methods").methods.init_cache("nope", *qkv(n=32)), ValueError, "method"),
    ("init-cache-meta", lambda t: __import__("sparsa.methods").methods.init_cache(
        sparsa.Quest(budget=32), *(x.to("meta") for x in qkv(n=32))), ValueError, "q: .*meta"),
    # devices: training on a device this machine cannot run
    ("train-device", lambda t: __import__("sparsa.train.loop").train.loop.train(
        __import__("sparsa.train.config").train.config.config_from_dict({}), t / "o", device="cuda:99"), ValueError,
     "device: cuda:99"),
    # evaluation: devices, time limits, pattern files, before any model is loaded
    ("load-model-device", lambda t: __import__("sparsa.eval.models").eval.models.load_model(device="gpu"), ValueError,
     "device: 'gpu' is not a device"),
    ("sweep-device-meta", lambda t: __import__("sparsa.eval.sweep").eval.sweep.run_sweep(
        __import__("sparsa.eval.sweep").eval.sweep.SweepConfig(), t / "o", device="meta"), ValueError, "device: the 'meta'"),
    ("sweep-time-limit-nan", lambda t: __import__("sparsa.eval.sweep").eval.sweep.run_sweep(
        __import__("sparsa.eval.sweep").eval.sweep.SweepConfig(), t / "o", time_limit_s=float("nan")), ValueError,
     "time_limit_s: must be a number of seconds >= 0"),
    ("sweep-patterns-same-name", lambda t: __import__("sparsa.eval.sweep").eval.sweep.SweepConfig(
        patterns=[_pattern_file(t / "a"), _pattern_file(t / "b")]), ValueError, "patterns: .* have the same name 'p'"),
    ("sweep-patterns-wrong-format", lambda t: __import__("sparsa.eval.sweep").eval.sweep.SweepConfig(
        patterns=[_write(t, "p.json", "[1, 2]")]), ValueError, "patterns: .*not a sparsa head-pattern file"),
    ("report-out-dir-is-file", lambda t: __import__("sparsa.eval.report").eval.report.write_report(
        _rows_file(t), _write(t, "f", "x"), bench_dir=None), ValueError, "out_dir: .*not a directory"),
    ("train-max-steps-negative", lambda t: __import__("sparsa.train.loop").train.loop.train(
        __import__("sparsa.train.config").train.config.config_from_dict({}), t / "o", max_steps=-1), ValueError,
     "max_steps: must be >= 0"),
    ("train-time-limit-negative", lambda t: __import__("sparsa.train.loop").train.loop.train(
        __import__("sparsa.train.config").train.config.config_from_dict({}), t / "o", time_limit_s=-1.0), ValueError,
     "time_limit_s: must be a number of seconds >= 0"),
    # the end-to-end benchmark's arguments, checked without a GPU
    ("e2e-decode-method", lambda t: __import__("sparsa.bench.e2e").bench.e2e.run_e2e_bench([1024], ["quest"], t / "o.json"),
     ValueError, r"methods: \['quest'\]"),
    ("e2e-layers", lambda t: __import__("sparsa.bench.e2e").bench.e2e.run_e2e_bench([1024], ["vertical_slash"], t / "o.json",
                                                                                      layers=0), ValueError, "layers: must be >= 1"),
    ("e2e-compression", lambda t: __import__("sparsa.bench.e2e").bench.e2e.run_e2e_bench(
        [1024], ["vertical_slash"], t / "o.json", compression=0.5), ValueError, "compression: must be a finite number >= 1"),
    ("train-device-meta", lambda t: __import__("sparsa.train.loop").train.loop.train(
        __import__("sparsa.train.config").train.config.config_from_dict({}), t / "o", device="meta"), ValueError,
     "device: the 'meta'"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_public_functions_reject_bad_arguments(call, exc, match, tmp_path):
    with pytest.raises(exc, match="^" + match):
        call(tmp_path)


def test_missing_matplotlib_is_named_before_any_work(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from sparsa.cli import app
    from sparsa.eval.report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(ValueError, match="^report: the plots need matplotlib"):
        write_report(_rows_file(tmp_path), tmp_path / "out", bench_dir=None)
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(app, ["eval", "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "error: --report: the plots need matplotlib" in r.output and "--no-report" in r.output
    assert not (tmp_path / "e").exists()


def test_eval_exits_non_zero_when_cells_failed(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sparsa.cli import app
    from sparsa.eval import sweep as sweep_mod

    def broken(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(sweep_mod, "greedy_generate", broken)
    args = [a.replace("{tmp}", str(tmp_path)) for a in _SMALL_EVAL]
    r = CliRunner().invoke(app, ["eval", *args])
    assert r.exit_code == 2, r.output
    # dense and streaming in both phases
    assert "3 cell(s) failed and have no rows" in r.output and "errors.rank0.jsonl" in r.output
    assert "kernel exploded" in (tmp_path / "e" / "errors.rank0.jsonl").read_text()


@pytest.mark.parametrize("content, message", [
    (b"\x83\x84\n", "not a text file of JSON lines"),
    (b"x\n", r"no result rows in .*line 1 is incomplete"),
    (None, "positive finite compression.*compression=-5"),
    ("null-length", "length=None"),
])
def test_report_rows_that_cannot_be_read_are_named(tmp_path, content, message):
    import json

    from sparsa.eval.metrics import load_rows

    good = json.loads(open(_rows_file(tmp_path)).read().splitlines()[0])
    f = tmp_path / "bad" / "rows.jsonl"
    f.parent.mkdir()
    if content is None:
        content = (json.dumps({**good, "compression": -5}) + "\n").encode()
    elif content == "null-length":
        content = (json.dumps({**good, "length": None}) + "\n").encode()
    f.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_rows(f.parent)
