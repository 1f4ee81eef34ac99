"""Task generators: determinism, length, answers recoverable from the prompt by plain-Python oracles."""
import re
from collections import Counter

import pytest

tokenizers = pytest.importorskip("tokenizers")

from sparsa.assets import TOKENIZER_PATH  # noqa: E402
from sparsa.eval import corpus  # noqa: E402
from sparsa.eval.scoring import Scorer  # noqa: E402
from sparsa.eval.tasks import describe_tasks, generate, get_task, list_tasks  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tokenizers.Tokenizer.from_file(str(TOKENIZER_PATH))


class ByteTokenizer:
    """A different tokenizer: one token per UTF-8 byte."""

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


# ---- oracles: recover the answer from the prompt text alone -------------------------------------

def _question(prompt):
    """(haystack, question) of a legacy or plain prompt; its last line ("Answer:" or the answer prefix) is dropped."""
    q = prompt.rsplit("\n\nQuestion: ", 1)
    assert len(q) == 2
    question, last = q[1].rsplit("\n", 1)
    assert last == "Answer:" or last.startswith(("The ", "In ", "No "))
    return q[0], question


def _needles(body):
    return re.findall(r"^The special number for ([a-z]+-[a-z]+) is (\d+)\.$", body, flags=re.M)


def oracle_niah_single(prompt):
    body, q = _question(prompt)
    key = re.match(r"What is the special number for (\S+)\?", q).group(1)
    vals = [v for k, v in _needles(body) if k == key]
    assert len(vals) == 1
    return vals[0]


oracle_niah_multikey = oracle_niah_single


def oracle_niah_multivalue(prompt):
    body, q = _question(prompt)
    key = re.match(r"What are all the special numbers for (\S+)\?", q).group(1)
    return [v for k, v in _needles(body) if k == key]


def oracle_niah_multiquery(prompt):
    body, q = _question(prompt)
    keys = re.split(r", | and ", re.match(r"What are the special numbers for (.+)\?", q).group(1))
    found = dict(_needles(body))
    return [found[k] for k in keys]


def oracle_variable_tracking(prompt):
    body, q = _question(prompt)
    value = re.search(r"the value (\d+)\?$", q).group(1)
    arrow = re.finditer(r"^(?:(\d+)|VAR ([A-Z]{5})) -> VAR ([A-Z]{5})$", body, flags=re.M)
    equals = re.finditer(r"^VAR ([A-Z]{5}) = (?:(\d+)|VAR ([A-Z]{5}))$", body, flags=re.M)
    assigns = [m.groups() for m in arrow] + [(m.group(2), m.group(3), m.group(1)) for m in equals]
    holds, order = set(), []
    for num, src, name in assigns:  # one notation per prompt, so this is document order
        if num == value or (src is not None and src in holds):
            holds.add(name)
            order.append(name)
    return order


def oracle_common_words(prompt):
    body, q = _question(prompt)
    k = int(re.match(r"What are the (\d+) most common", q).group(1))
    words = re.findall(r"^\d+\. (\w+)$", body, flags=re.M)
    counts = Counter(words).most_common()
    assert counts[k - 1][1] > counts[k][1]  # the top k are well defined
    top = {w for w, _ in counts[:k]}
    return sorted(top, key=words.index)


def _chapters(body):
    parts = re.split(r"^Chapter (\d+)$", body, flags=re.M)
    return {int(n): text for n, text in zip(parts[1::2], parts[2::2])}


def oracle_story_retrieval(prompt):
    body, q = _question(prompt)
    k, obj = re.match(r"In chapter (\d+), where was the (\w+) hidden\?", q).groups()
    spots = re.findall(rf"hid the {obj} in the (\w+)\.", _chapters(body)[int(k)])
    assert len(spots) == 1
    return spots[0]


def oracle_story_multihop(prompt):
    body, q = _question(prompt)
    item = re.match(r"In which town does the person who bought the (\w+ \w+) live\?", q).group(1)
    buyers = re.findall(rf"(\w+ \w+) bought an? {item} from a trader\.", body)
    assert len(buyers) == 1
    towns = re.findall(rf"{buyers[0]} has lived in (\w+) since childhood\.", body)
    assert len(towns) == 1
    return towns[0]


def oracle_story_filter(prompt):
    body, _ = _question(prompt)
    return [str(n) for n, text in sorted(_chapters(body).items()) if "a letter arrived for" not in text]


def oracle_doc_qa(prompt):
    body, q = _question(prompt)
    town, rest = re.match(r"According to the document about the town of (\w+), (.+)$", q, flags=re.S).groups()
    parts = re.split(r"^Document \d+: The town of (\w+)$", body, flags=re.M)
    docs = dict(zip(parts[1::2], parts[2::2]))
    doc = docs[town]
    patterns = {"main trade": r"Its main trade is (\w+)\.", "river": r"lies on the river (\w+)\.",
                "year": r"founded in the year (\d+)\.", "landmark": r"landmark is the (\w+)\."}
    for k, pat in patterns.items():
        if k in rest:
            return re.search(pat, doc).group(1)
    raise AssertionError(rest)


ORACLES = {name[len("oracle_"):]: f for name, f in globals().items() if name.startswith("oracle_")}


def test_every_task_has_an_oracle():
    assert sorted(ORACLES) == sorted(list_tasks())


@pytest.mark.parametrize("name", sorted(ORACLES))
@pytest.mark.parametrize("length", [1024, 4096])
def test_generator_contract(tok, name, length):
    a = generate(name, length, 3, tok)
    b = generate(name, length, 3, tok)
    c = generate(name, length, 4, tok)
    assert a == b and a.prompt == b.prompt
    assert c.prompt != a.prompt
    n = len(tok.encode(a.prompt, add_special_tokens=False).ids)
    assert n == a.n_tokens
    assert 0.9 * length <= n <= length
    assert a.prompt.endswith("Answer:") and a.style == "legacy"  # sparsa's tokenizer: the legacy format
    assert a.prompt == a.context + "\n\nQuestion: " + a.question + "\nAnswer:"
    expected = ORACLES[name](a.prompt)
    ans = [a.answer] if isinstance(a.answer, str) else list(a.answer)
    assert ans == ([expected] if isinstance(expected, str) else expected)
    prompt, answer, scorer = a
    assert scorer(" " + a.answer_text + "\n") == 1.0
    assert a.scores(" " + a.answer_text + ".") == {"score": 1.0, "exact": 1.0}
    assert scorer(" nothing") < 1.0


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_minimum_length_and_other_tokenizers(tok, name):
    t = get_task(name)
    inst = t.generate(t.min_length, 0, tok)
    assert 0.9 * t.min_length <= inst.n_tokens <= t.min_length
    inst = generate(name, 3000, 1, ByteTokenizer())
    assert 2700 <= len(inst.prompt.encode()) <= 3000 and inst.prompt.endswith("\n" + inst.answer_prefix)
    expected = ORACLES[name](inst.prompt)
    assert (inst.answer if isinstance(inst.answer, str) else list(inst.answer)) == expected
    with pytest.raises(ValueError, match="at least"):
        t.generate(t.min_length - 1, 0, tok)


def test_hf_tokenizer_and_train_split(tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    a = generate("niah_multikey", 2048, 5, hf)
    b = generate("niah_multikey", 2048, 5, tok)
    assert a.prompt == b.prompt
    t = generate("niah_single", 2048, 5, tok, split="train")
    assert t.prompt != b.prompt and oracle_niah_single(t.prompt) == t.answer


def test_long_context(tok):
    inst = generate("niah_multiquery", 16384, 0, tok)
    assert 0.9 * 16384 <= inst.n_tokens <= 16384
    assert list(inst.answer) == oracle_niah_multiquery(inst.prompt)


def test_task_parameters(tok):
    inst = generate("variable_tracking", 2048, 0, tok, chains=3, hops=6)
    assert len(inst.answer) == 7 and list(inst.answer) == oracle_variable_tracking(inst.prompt)
    assert re.search(r"^\d{5} -> VAR [A-Z]{5}$", inst.prompt, flags=re.M)  # arrow notation by default
    assert not re.search(r"^VAR [A-Z]{5} = ", inst.prompt, flags=re.M)
    ruler = generate("variable_tracking", 2048, 0, tok, chains=3, hops=6, notation="equals")
    assert re.search(r"^VAR [A-Z]{5} = VAR [A-Z]{5}$", ruler.prompt, flags=re.M)
    assert not re.search(r" -> VAR [A-Z]{5}$", ruler.prompt, flags=re.M)
    assert len(ruler.answer) == 7 and list(ruler.answer) == oracle_variable_tracking(ruler.prompt)
    with pytest.raises(ValueError, match="notation"):
        generate("variable_tracking", 2048, 0, tok, notation="colon")
    inst = generate("niah_multikey", 2048, 0, tok, distractors=30)
    assert len(_needles(_question(inst.prompt)[0])) == 31
    with pytest.raises(TypeError, match="not a parameter"):
        get_task("niah_single", distractors=3)


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="unknown task 'nope'.*niah_single"):
        generate("nope", 1024, 0, tok)
    with pytest.raises(TypeError, match="length"):
        generate("niah_single", 1024.0, 0, tok)
    with pytest.raises(ValueError, match="split"):
        generate("niah_single", 1024, 0, tok, split="test")
    with pytest.raises(TypeError, match="tokenizer"):
        generate("niah_single", 1024, 0, object())

    # a word-level tokenizer that knows no digits or punctuation
    from tokenizers import Tokenizer, models, pre_tokenizers
    wl = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="tokenizer: cannot encode"):
        generate("niah_single", 1024, 0, wl)

    class Lossy(ByteTokenizer):
        def decode(self, ids):
            return super().decode(ids).lower()

    with pytest.raises(ValueError, match="tokenizer: does not round-trip"):
        generate("niah_single", 1024, 0, Lossy())


def test_scorers():
    assert Scorer("exact", "4821937")(" 4821937.\nmore text") == 1.0
    assert Scorer("exact", "4821937")(" 4821937 is it") == 0.0
    assert Scorer("set_f1", ("1", "2", "3", "4"))(" 4, 3, 9") == pytest.approx(2 * 2 / 7)
    assert Scorer("set_iou", ("A", "B"))(" b, c") == pytest.approx(1 / 3)
    assert Scorer("list_accuracy", ("1", "2", "3"))(" 1, 3, 2") == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="metric"):
        Scorer("bleu", "x")


def test_descriptions_and_haystack_excludes_check_files():
    d = describe_tasks()
    assert all(v["description"] and v["metric"] for v in d.values())
    for split in ("train", "eval", "all"):
        assert not set(corpus.stdlib_files(split)) & set(corpus.CHECK_FILES)
    assert not set(corpus.stdlib_files("train")) & set(corpus.stdlib_files("eval"))
    lines = set(corpus.haystack_lines("eval")) | set(corpus.haystack_lines("train"))
    assert "class TextWrapper:" not in lines  # textwrap.py is a check file
