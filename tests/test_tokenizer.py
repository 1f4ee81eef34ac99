"""The shipped byte-level BPE tokenizer: round trips, compactness, reproducibility."""
import json
import platform

import pytest

tokenizers = pytest.importorskip("tokenizers")

from sparsa.assets import TOKENIZER_PATH, load_tokenizer  # noqa: E402
from sparsa.eval.corpus import CHECK_FILES, check_file_paths, stdlib_files  # noqa: E402
from sparsa.train.tokenizer import template_words, tokenizer_stats, train_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_specials_and_bos(tok):
    assert tok.get_vocab_size() == 8192
    assert [tok.token_to_id(t) for t in ("<|pad|>", "<|bos|>", "<|eos|>")] == [0, 1, 2]
    assert tok.encode("x").ids[0] == 1 and tok.encode("x", add_special_tokens=False).ids[0] != 1


def test_round_trip_on_held_out_files_and_any_text(tok):
    paths = check_file_paths()
    assert len(paths) >= 3 and all(p.name in {c.split("/")[-1] for c in CHECK_FILES} for p in paths)
    for p in paths:
        text = p.read_text(encoding="utf-8")
        assert tok.decode(tok.encode(text).ids) == text
    weird = "naïve café – 東京 🙂\t\r\n  \x00 end"
    assert tok.decode(tok.encode(weird).ids) == weird


def test_compression_on_held_out_files(tok):
    stats = tokenizer_stats(tok, check_file_paths())
    assert stats["tokens_per_kb"] < 320  # about 3.5 bytes per token on Python source


def test_task_vocabulary_is_compact(tok):
    vocab = tok.get_vocab()
    assert all(f"{i:02d}" in vocab and str(i) in vocab for i in range(100))
    assert all(f"{i:03d}" in vocab for i in range(1000))
    enc = tok.encode(" 4821937", add_special_tokens=False)
    assert enc.tokens == ["Ġ", "482", "193", "7"]
    from sparsa.eval.tasks.words import all_vocabulary

    for w in set(all_vocabulary()) | set(template_words()):
        assert len(tok.encode(" " + w, add_special_tokens=False).ids) <= 2, w
        assert len(tok.encode(w, add_special_tokens=False).ids) <= 2, w
    for s in ("Question:", "\nAnswer:", " VAR", "VAR", "Chapter", " Document"):
        assert len(tok.encode(s, add_special_tokens=False).ids) <= 1 + s.count(":") + s.count("\n"), s


def test_training_is_deterministic_and_excludes_check_files():
    assert not set(CHECK_FILES) & set(stdlib_files("all"))
    files = ["bisect.py", "colorsys.py"]
    a = train_tokenizer(600, files=files, supplement=False)
    b = train_tokenizer(600, files=files, supplement=False)
    assert a.to_str() == b.to_str() and a.get_vocab_size() == 600


@pytest.mark.slow
def test_shipped_tokenizer_is_reproduced_by_its_trainer(tmp_path):
    meta = json.loads(TOKENIZER_PATH.with_name("tokenizer.meta.json").read_text())
    if meta["python"] != platform.python_version():
        pytest.skip(f"tokenizer trained on Python {meta['python']}; its stdlib differs from this one's")
    train_tokenizer(meta["vocab_size"], out=tmp_path / "tokenizer.json", words=meta["supplement_words"])
    assert (tmp_path / "tokenizer.json").read_text() == TOKENIZER_PATH.read_text()
