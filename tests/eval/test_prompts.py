"""Prompt rendering: answer prefix at the end, chat templates, length fit, determinism, context/question split."""
import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from sparsa.assets import TOKENIZER_PATH  # noqa: E402
from sparsa.eval.prompts import (  # noqa: E402
    PromptRenderer, render_prompt, resolve_style, split_prompt_ids)
from sparsa.eval.tasks import generate, list_tasks  # noqa: E402
from sparsa.eval.tokenization import TokenCounter, encode_for_model  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}")


class ByteTokenizer:
    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


@pytest.fixture(scope="module")
def tok():
    return tokenizers.Tokenizer.from_file(str(TOKENIZER_PATH))


def _hf(tok, template=None, add_bos=True):
    t = tokenizers.Tokenizer.from_str(tok.to_str())
    assert t.encode("x").ids[0] == t.token_to_id("<|bos|>")  # sparsa's tokenizer adds BOS on encoding
    if not add_bos:
        t.post_processor = tokenizers.processors.TemplateProcessing(single="$A", special_tokens=[])
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|bos|>", eos_token="<|eos|>",
                                              pad_token="<|pad|>")
    if template is not None:
        hf.chat_template = template
    return hf


@pytest.fixture(scope="module")
def chat_tok(tok):
    return _hf(tok, TEMPLATE)


def test_style_choice(tok, chat_tok):
    assert resolve_style(tok) == "legacy"  # sparsa's own tokenizer: the format sparsa-tiny was trained on
    assert resolve_style(_hf(tok)) == "legacy"
    assert resolve_style(ByteTokenizer()) == "plain"
    assert resolve_style(chat_tok) == "chat"
    assert resolve_style(chat_tok, chat=False) == "plain"
    assert resolve_style(tok, chat=False) == "legacy"
    assert resolve_style(tok, "plain") == "plain"
    with pytest.raises(ValueError, match="chat template"):
        resolve_style(tok, chat=True)
    with pytest.raises(ValueError, match="style"):
        resolve_style(tok, "markdown")


@pytest.mark.parametrize("name", list_tasks())
def test_chat_prompts_end_with_the_answer_prefix_and_fit(chat_tok, name):
    length = 1024
    a = generate(name, length, 3, chat_tok)
    b = generate(name, length, 3, chat_tok)
    assert a == b and a.prompt == b.prompt  # deterministic
    assert a.style == "chat" and a.prompt.endswith("<|bos|>assistant\n" + a.answer_prefix)
    # the template's opening BOS is left to the encoding, which adds it
    assert a.prompt.startswith("user\n" + a.context + "\n\nQuestion: " + a.question + "<|eos|>")
    assert encode_for_model(chat_tok, a.prompt)[:2] == [chat_tok.bos_token_id] + chat_tok.encode(
        "user", add_special_tokens=False)[:1]
    n = TokenCounter(chat_tok).count(a.prompt)
    assert n == a.n_tokens and 0.9 * length <= n <= length
    assert render_prompt(chat_tok, a) == a.prompt
    # the same seed draws the same facts in every style; only the filler amount differs
    for style in ("plain", "legacy"):
        o = generate(name, length, 3, chat_tok, style=style)
        if name.startswith("niah"):  # the style is not part of the seed: the same needles are drawn
            assert o.answer == a.answer and o.question == a.question and o.answer_prefix == a.answer_prefix
        assert 0.9 * length <= o.n_tokens <= length and o.style == style
    assert o.prompt.endswith("\nAnswer:")


@pytest.mark.parametrize("name", list_tasks())
def test_plain_prompts(name):
    inst = generate(name, 2000, 0, ByteTokenizer())
    assert inst.style == "plain"
    assert inst.prompt == inst.context + "\n\nQuestion: " + inst.question + "\n" + inst.answer_prefix
    assert 1800 <= len(inst.prompt.encode()) <= 2000
    assert inst.scorer(" " + inst.answer_text + ".") == 1.0 and inst.exact(" " + inst.answer_text) == 1.0


def test_legacy_style_is_the_old_format(tok):
    inst = generate("niah_single", 1024, 0, tok)
    assert inst.style == "legacy"
    assert inst.prompt == inst.context + "\n\nQuestion: " + inst.question + "\nAnswer:"
    assert inst.question == f"What is the special number for {inst.meta['key']}?"
    assert inst.answer_prefix == f"The special number for {inst.meta['key']} is"


def test_template_bos_kept_when_encoding_adds_none(tok):
    hf = _hf(tok, TEMPLATE, add_bos=False)
    inst = generate("niah_single", 512, 0, hf)
    assert inst.prompt.startswith("<|bos|>user\n")
    ids = encode_for_model(hf, inst.prompt)
    assert ids[0] == hf.bos_token_id and ids[1] != hf.bos_token_id


@pytest.mark.parametrize("kind", ["tokenizers", "hf_chat", "hf_no_bos", "bytes"])
@pytest.mark.parametrize("name", ["niah_single", "niah_multiquery", "story_filter", "doc_qa"])
def test_context_question_split(tok, chat_tok, kind, name):
    t = {"tokenizers": tok, "hf_chat": chat_tok, "bytes": ByteTokenizer(),
         "hf_no_bos": _hf(tok, TEMPLATE, add_bos=False)}[kind]
    inst = generate(name, 1024, 1, t)
    ctx, q = split_prompt_ids(t, inst)
    assert ctx + q == encode_for_model(t, inst.prompt)
    counter = TokenCounter(t)
    assert counter.decode(q).lstrip().startswith("Question: ")
    assert counter.decode(q).endswith(inst.answer_prefix if inst.style != "legacy" else "Answer:")
    assert inst.context.rstrip()[-20:] in counter.decode(ctx)[-40:]
    assert inst.question in counter.decode(q) and inst.question not in counter.decode(ctx)


def test_renderer_without_a_separable_template(tok):
    # a template that transforms the message cannot be split around a placeholder; it is rendered in full
    hf = _hf(tok, "{% for m in messages %}<|bos|>{{ m['content'] | upper }}<|eos|>{% endfor %}<|bos|>")
    r = PromptRenderer(hf)
    assert r.style == "chat" and r._wrap is None
    # (the leading BOS is left to the encoding, which adds it)
    assert r.render("ctx", "q?", "It is") == "CTX\n\nQUESTION: Q?<|eos|><|bos|>It is"
