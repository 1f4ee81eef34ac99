"""Scoring: tolerant parsing of a model's phrasing; exact vs partial credit; duplicates not rewarded."""
import pytest

from sparsa.eval.scoring import Scorer, parse_items

NEEDLE = dict(answer_prefix="The special number for quiet-harbor is",
              question="What is the special number for quiet-harbor?")


@pytest.mark.parametrize("pred", [
    " 4821937.",
    "4821937",
    '  "4821937".',
    " **4821937**.",
    " `4821937`",
    " 4821937.\nQuestion: what else?",
    "\n\n 4821937",
    " 4821937. The special number for quiet-harbor is 4821937.",
    " 4821937. The special number for quiet-harbor is 4821937. The special number for quiet-harbor is 4821937.",
    "The special number for quiet-harbor is 4821937.",
    " is 4821937.",
    " **The special number for quiet-harbor is 4821937.**",
])
def test_single_answer_tolerates_phrasing(pred):
    s = Scorer("exact", "4821937", **NEEDLE)
    assert s(pred) == 1.0 and s.exact(pred) == 1.0


@pytest.mark.parametrize("pred", [" 4821938.", " 4821937 or 1234567", " 4821937 4821937", "", " unknown"])
def test_single_answer_wrong(pred):
    assert Scorer("exact", "4821937", **NEEDLE)(pred) == 0.0


def test_restatement_with_a_different_value_is_cut():
    # the answer is given first; a later restatement with another value does not count
    s = Scorer("exact", "4821937", **NEEDLE)
    assert s(" 4821937. The special number for quiet-harbor is 1111111.") == 1.0
    assert s(" 1111111. The special number for quiet-harbor is 4821937.") == 0.0


def test_list_answers_exact_needs_every_item_once():
    kw = dict(answer_prefix="The special numbers for pale-sail are",
              question="What are all the special numbers for pale-sail?")
    s = Scorer("set_f1", ("11", "22", "33", "44"), **kw)
    assert s.scores(" 11, 22, 33 and 44.") == {"score": 1.0, "exact": 1.0}
    assert s.scores(" 44, 33, 22, 11") == {"score": 1.0, "exact": 1.0}  # order free for set metrics
    assert s.scores(" **11**, **22**, **33**, and **44**.")["exact"] == 1.0
    r = s.scores(" 11, 22, 33")
    assert r["exact"] == 0.0 and r["score"] == pytest.approx(2 * 3 / 7)


def test_duplicates_are_not_rewarded():
    s = Scorer("set_f1", ("11", "22", "33", "44"))
    looping = " 11, 22, 11, 22, 11, 22, 11, 22, 11, 22, 11, 22"
    r = s.scores(looping)
    assert r["exact"] == 0.0
    # 2 of 4 expected items, 12 predicted: multiset F1 = 2 * 2 / (12 + 4)
    assert r["score"] == pytest.approx(0.25)
    assert r["score"] < s(" 11, 22")  # saying less is better than repeating
    assert s(" 11, 22, 33, 44, 44") < 1.0 and s.exact(" 11, 22, 33, 44, 44") == 0.0
    iou = Scorer("set_iou", ("a", "b"))
    assert iou(" a, b") == 1.0 and iou(" a, a, b") == pytest.approx(2 / 3)


def test_list_accuracy_is_ordered_and_penalises_extra_items():
    s = Scorer("list_accuracy", ("1", "2", "3"))
    assert s.scores(" 1, 2, 3") == {"score": 1.0, "exact": 1.0}
    assert s.scores(" 1, 3, 2") == {"score": pytest.approx(1 / 3), "exact": 0.0}
    assert s(" 1, 2, 3, 4, 5, 6") == pytest.approx(0.5)


def test_question_words_are_ignored_unless_they_are_the_answer():
    q = "In chapter 3, where was the lamp hidden?"
    s = Scorer("exact", "attic", answer_prefix="In chapter 3, the lamp was hidden in the", question=q)
    assert s(" attic.") == 1.0
    assert s(" attic, where the lamp was hidden.") == 1.0
    assert s(" cellar.") == 0.0
    # the answer word "well" is also an English word; it is never dropped
    s = Scorer("exact", "well", answer_prefix="In chapter 3, the lamp was hidden in the", question=q)
    assert s(" well.") == 1.0 and s(" well in the well") == 0.0


def test_variable_names_with_their_var_marker():
    s = Scorer("set_iou", ("ABCDE", "FGHIJ"),
               answer_prefix="In order of assignment, the variables assigned the value 12345 are",
               question="In order of assignment, which variables are assigned, directly or through other "
                        "variables, the value 12345?")
    assert s.scores(" VAR ABCDE and VAR FGHIJ.") == {"score": 1.0, "exact": 1.0}
    assert s(" VAR ABCDE, VAR KLMNO") == pytest.approx(1 / 3)


def test_legacy_and_plain_predictions_and_errors():
    s = Scorer("exact", "4821937")
    assert s(" 4821937.\nmore text") == 1.0
    assert parse_items("Answer: 4821937", "4821937") == ["4821937"]
    with pytest.raises(TypeError, match="prediction"):
        s(None)
    with pytest.raises(ValueError, match="metric"):
        Scorer("bleu", "x")


def test_a_list_after_a_colon():
    s = Scorer("set_f1", ("11", "22", "33"), answer_prefix="The special numbers for pale-sail are")
    assert s.scores(":\n1. 11\n2. 22\n3. 33\n\nMore text 44") == {"score": 1.0, "exact": 1.0}
    assert s.scores(":\n\n- 11\n- 22\n- 33") == {"score": 1.0, "exact": 1.0}
    assert s(" 11, 22\n33") == pytest.approx(2 * 2 / 5)  # only a line ending with ":" opens a list
