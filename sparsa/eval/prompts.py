"""Render a task instance's parts (context, question, answer prefix) into the prompt a model reads.

Styles:

- ``"chat"``: the user message ``context + "\\n\\n" + "Question: " + question`` through the
  tokenizer's chat template (``add_generation_prompt=True``), then the answer prefix as the
  start of the assistant's reply, so the model's first generated token is the answer's first;
- ``"plain"``: ``context + "\\n\\n" + "Question: " + question + "\\n" + answer_prefix``;
- ``"legacy"``: ``context + "\\n\\n" + "Question: " + question + "\\nAnswer:"``, the format
  sparsa-tiny was trained on (its answer follows "Answer:" after a space).

``resolve_style`` picks one for a tokenizer: "chat" when it has a chat template, "legacy" for
sparsa's own tokenizers (their "<|bos|>"/"<|eos|>"/"<|pad|>" tokens and no chat template: the
shipped sparsa-tiny scores far lower in the plain style), else "plain".

``split_prompt_ids`` cuts the model's token ids of a rendered prompt into a context part and a
question part (question, end of the chat turn, answer prefix) whose concatenation is the whole
prompt, for runners that prefill and compress the context before they see the question.
"""
from __future__ import annotations

from typing import Any

from .tokenization import TokenCounter, encode_for_model

STYLES = ("chat", "plain", "legacy")
SEPARATOR = "\n\n"           # between the context and the question
QUESTION_LABEL = "Question: "
LEGACY_ANSWER = "Answer:"
_SENTINEL = "\x00sparsa-user-message\x00"
_SPARSA_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")


def _unwrap(tokenizer: Any) -> Any:
    return tokenizer.tokenizer if isinstance(tokenizer, TokenCounter) else tokenizer


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is a HuggingFace tokenizer with a chat template."""
    tok = _unwrap(tokenizer)
    return bool(getattr(tok, "chat_template", None)) and callable(getattr(tok, "apply_chat_template", None))


def is_sparsa_tokenizer(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` looks like sparsa's own (its three special tokens, no chat template)."""
    tok = _unwrap(tokenizer)
    if has_chat_template(tok):
        return False
    get = getattr(tok, "token_to_id", None)
    if callable(get) and (type(tok).__module__ or "").startswith("tokenizers"):
        return all(get(t) is not None for t in _SPARSA_SPECIALS)
    conv = getattr(tok, "convert_tokens_to_ids", None)
    if callable(conv):
        unk = getattr(tok, "unk_token_id", None)
        ids = [conv(t) for t in _SPARSA_SPECIALS]
        return all(i is not None and i != unk for i in ids)
    return False


def resolve_style(tokenizer: Any, style: str | None = None, *, chat: bool | None = None) -> str:
    """The rendering style for ``tokenizer``.

    style: "chat", "plain", "legacy", or None/"auto" to choose (see the module docstring).
    chat: True requires the chat template; False never uses it (the choice falls back to
        "legacy" for sparsa tokenizers, "plain" otherwise).
    """
    if style not in (None, "auto") and style not in STYLES:
        raise ValueError(f"style: must be one of {', '.join(STYLES)} or None, got {style!r}")
    if style == "chat" or chat is True:
        if chat is False:
            raise ValueError("style: 'chat' contradicts chat=False")
        if not has_chat_template(tokenizer):
            raise ValueError("tokenizer: the chat style needs a HuggingFace tokenizer with a chat template")
        return "chat"
    if style in ("plain", "legacy"):
        return style
    if chat is None and has_chat_template(tokenizer):
        return "chat"
    return "legacy" if is_sparsa_tokenizer(tokenizer) else "plain"


class PromptRenderer:
    """Renders (context, question, answer prefix) in one style for one tokenizer.

    The chat template is rendered once around a placeholder, so rendering many candidate
    contexts while fitting a length costs string concatenation only.
    """

    def __init__(self, tokenizer: Any, style: str | None = None, *, chat: bool | None = None):
        self.tokenizer = _unwrap(tokenizer)
        self.style = resolve_style(self.tokenizer, style, chat=chat)
        self._wrap: tuple[str, str] | None = None
        if self.style == "chat":
            self._wrap = self._chat_wrap()

    def _apply_template(self, user: str) -> str:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True)
        return self._strip_auto_bos(text)

    def _strip_auto_bos(self, text: str) -> str:
        """Drop a BOS the template writes when encoding adds one anyway (no double BOS)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos):
            probe = encode_for_model(self.tokenizer, "x")
            if probe and probe[0] == getattr(self.tokenizer, "bos_token_id", None):
                return text[len(bos):]
        return text

    def _chat_wrap(self) -> tuple[str, str] | None:
        text = self._apply_template(_SENTINEL)
        if text.count(_SENTINEL) != 1:
            return None  # the template transforms the message; render each prompt in full
        head, tail = text.split(_SENTINEL)
        return head, tail

    def user_message(self, context: str, question: str) -> str:
        return context + SEPARATOR + QUESTION_LABEL + question

    def render(self, context: str, question: str, answer_prefix: str) -> str:
        """The prompt text (special tokens the tokenizer adds on encoding, like BOS, not included)."""
        user = self.user_message(context, question)
        if self.style == "legacy":
            return user + "\n" + LEGACY_ANSWER
        if self.style == "plain":
            return user + "\n" + answer_prefix
        if self._wrap is not None:
            return self._wrap[0] + user + self._wrap[1] + answer_prefix
        return self._apply_template(user) + answer_prefix

    def question_start(self, context: str, question: str, answer_prefix: str) -> int:
        """Character offset in the rendered prompt where the question part begins (after the separator)."""
        full = self.render(context, question, answer_prefix)
        tail = QUESTION_LABEL + question
        if self.style == "chat":
            head = self._wrap[0] if self._wrap is not None else None
            if head is not None:
                return len(head) + len(context) + len(SEPARATOR)
        i = full.rfind(tail)
        if i < 0:
            raise ValueError("instance: the rendered prompt does not contain the question")
        return i


def render_prompt(tokenizer: Any, instance: Any, *, chat: bool | None = None, style: str | None = None) -> str:
    """The prompt for ``instance`` (a ``TaskInstance``) as ``tokenizer``'s model should read it.

    chat / style: see :func:`resolve_style`; with neither given, the style the instance was
    generated with (``instance.style``), so the result equals ``instance.prompt`` for the
    tokenizer it was generated for. The length fit holds for that tokenizer and style only.
    """
    r = PromptRenderer(tokenizer, style if style is not None else _default_style(tokenizer, instance, chat),
                       chat=chat)
    return r.render(instance.context, instance.question, instance.answer_prefix)


def _default_style(tokenizer: Any, instance: Any, chat: bool | None) -> str | None:
    own = getattr(instance, "style", None)
    if chat is None and own in STYLES and (own != "chat" or has_chat_template(tokenizer)):
        return own
    return None


def _offsets(tokenizer: Any, prompt: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    tok = _unwrap(tokenizer)
    mod = type(tok).__module__ or ""
    if mod.startswith("tokenizers") and hasattr(tok, "encode_batch"):
        enc = tok.encode(prompt)
        return list(enc.ids), [tuple(o) for o in enc.offsets]
    if hasattr(tok, "batch_decode") and callable(tok) and getattr(tok, "is_fast", False):
        enc = tok(prompt, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    return encode_for_model(tok, prompt), None


def split_prompt_ids(tokenizer: Any, instance: Any, *, chat: bool | None = None,
                     style: str | None = None) -> tuple[list[int], list[int]]:
    """(context_ids, question_ids): the model's token ids of the rendered prompt, cut where the question starts.

    ``context_ids + question_ids`` equals ``encode_for_model(tokenizer, render_prompt(...))``
    (BOS, when the tokenizer adds one, in the context part). The context part holds the chat
    template's opening, the context and the separator; the question part holds the question,
    the end of the user turn and the answer prefix. A token spanning the cut goes to the question part.
    """
    r = PromptRenderer(tokenizer, style if style is not None else _default_style(tokenizer, instance, chat),
                       chat=chat)
    prompt = r.render(instance.context, instance.question, instance.answer_prefix)
    cut = r.question_start(instance.context, instance.question, instance.answer_prefix)
    ids, offsets = _offsets(tokenizer, prompt)
    if offsets is not None:
        k = 0
        while k < len(ids) and offsets[k][1] <= cut:
            k += 1
        return ids[:k], ids[k:]
    # no offsets: the longest prefix of tokens whose decoded text stays within the context part
    counter = TokenCounter(tokenizer)
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(counter.decode(ids[:mid])) <= cut:
            lo = mid
        else:
            hi = mid - 1
    return ids[:lo], ids[lo:]
