import json
import math

import pytest

from sparsa.eval.metrics import (MAX_TOLERABLE_RULE, GroupKey, load_rows, max_tolerable_compression,
                                 mcnemar_exact, mean_interval, read_jsonl, summarize_cells, wilson_interval)

from ._rows import row, standard_rows, write_jsonl


@pytest.mark.parametrize("b, c, p", [(0, 5, 0.0625), (5, 0, 0.0625), (1, 9, 2 * (1 + 10) / 1024), (0, 0, 1.0),
                                     (4, 4, 1.0), (7, 7, 1.0), (2, 0, 0.5), (0, 1, 1.0), (3, 4, 1.0),
                                     (0, 6, 0.03125)])
def test_mcnemar_exact_hand_cases(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-15)


def test_mcnemar_large_counts_finite():
    p = mcnemar_exact(0, 2000)
    assert 0.0 <= p < 1e-300
    assert mcnemar_exact(1000, 1000) == 1.0


def test_mcnemar_bad_input():
    with pytest.raises(ValueError, match="b, c"):
        mcnemar_exact(-1, 3)


@pytest.mark.parametrize("k, n, lo, hi", [(5, 10, 0.236593, 0.763407), (0, 10, 0.0, 0.277533),
                                          (10, 10, 0.722467, 1.0), (1, 20, 0.008881, 0.236131)])
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=2e-6) and got[1] == pytest.approx(hi, abs=2e-6)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_mean_interval_deterministic_and_covers_mean():
    xs = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75, 0.1, 0.9]
    a, b = mean_interval(xs), mean_interval(xs)
    assert a == b
    assert a[0] < sum(xs) / len(xs) < a[1]
    assert mean_interval([0.3]) == (0.3, 0.3)
    with pytest.raises(ValueError, match="values"):
        mean_interval([])


def test_summary_pairs_and_counts():
    rows = [row("dense", s, 1) for s in range(10)]
    rows += [row("m", s, 0 if s < 2 else 1, compression=4.0, target=4) for s in range(12)]  # 2 unpaired samples
    rows.append(row("dense", 10, 0))  # dense sample 10: method exact there -> c = 1
    (m,) = [s for s in summarize_cells(rows) if s.method == "m"]
    assert (m.n, m.n_paired, m.b, m.c) == (12, 11, 2, 1)
    assert m.p_value == pytest.approx(1.0)
    assert m.worse and not m.significantly_worse
    assert m.exact == pytest.approx(10 / 12)
    assert m.compression == 4.0
    (d,) = [s for s in summarize_cells(rows) if s.method == "dense"]
    assert d.n_paired is None and d.p_value is None


def test_max_tolerable_is_monotonic():
    mt = max_tolerable_compression(standard_rows())
    vs = mt[GroupKey("tiny", "niah", 8192, "vs", "prefill", "aware")]
    assert vs.compression == pytest.approx(5.1)  # 10.2 fails (p=0.03125); the lucky 20.3 does not count
    assert vs.n_cells == 4 and vs.n_tested == 4
    assert "10.2" in vs.reason
    bad = mt[GroupKey("tiny", "niah", 8192, "bad", "prefill", "aware")]
    assert bad.compression is None  # compression-1 cell counts and already fails
    assert "monotonic" in MAX_TOLERABLE_RULE and "McNemar" in MAX_TOLERABLE_RULE


def test_max_tolerable_all_hold_and_no_dense():
    rows = [row("dense", s, 1) for s in range(8)] + [row("m", s, 1, compression=c) for s in range(8) for c in (3.0,)]
    rows += [row("m", s, 1, compression=9.0, target=9) for s in range(8)]
    rows += [row("m", s, 1, task="other", compression=3.0) for s in range(8)]  # no dense on this task
    mt = max_tolerable_compression(summarize_cells(rows))
    assert mt[GroupKey("tiny", "niah", 8192, "m", "prefill", "aware")].compression == 9.0
    other = mt[GroupKey("tiny", "other", 8192, "m", "prefill", "aware")]
    assert other.compression is None and other.n_tested == 0 and other.reason == "no dense baseline"


def test_dedupe_last_wins_across_files(tmp_path):
    write_jsonl(tmp_path / "rows.rank0.jsonl", [row("m", 0, 0, compression=2.0)])
    write_jsonl(tmp_path / "rows.rank1.jsonl", [row("m", 0, 1, compression=2.0), row("dense", 0, 1)])
    rows = load_rows(tmp_path)
    assert len(rows) == 2
    assert [r["exact"] for r in rows if r["method"] == "m"] == [1]


def test_torn_last_line_warns(tmp_path):
    p = write_jsonl(tmp_path / "rows.jsonl", [row("dense", 0, 1), row("dense", 1, 0)], torn=True)
    with pytest.warns(UserWarning, match="line 3"):
        rows = read_jsonl(p)
    assert len(rows) == 2


def test_corrupt_middle_line_is_error(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps(row()) + "\n{oops\n" + json.dumps(row(sample=1)) + "\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl: line 2"):
        read_jsonl(p)


def test_missing_field_and_missing_results(tmp_path):
    p = tmp_path / "rows.jsonl"
    r = row()
    del r["exact"]
    p.write_text(json.dumps(r) + "\n")
    with pytest.raises(ValueError, match="line 1.*exact"):
        read_jsonl(p)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="results: no \\*.jsonl"):
        load_rows(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        load_rows(tmp_path / "nope")


def test_targets_normalised():
    rows = [row("m", 0, 1, compression=2.0, target=2), row("m", 1, 1, compression=2.0, target=2.0)]
    (s,) = summarize_cells(rows)
    assert s.n == 2 and s.target == 2.0 and not math.isnan(s.score)


def test_a_results_directory_reads_rows_files_only(tmp_path):
    write_jsonl(tmp_path / "rows.rank0.jsonl", [row("dense", 0, 1), row("m", 0, 1, compression=2.0)])
    (tmp_path / "errors.rank0.jsonl").write_text('{"task": "t", "method": "x", "error": "boom"}\n')
    assert len(load_rows(tmp_path)) == 2


def test_weak_dense_makes_a_cell_untestable_not_tolerant():
    """Dense exact on 5 samples: even a method failing all 5 has p = 0.0625, so "holds" would be
    vacuous; with 6 the same total failure is significant (p = 0.03125)."""
    for dense_exact in (5, 6):
        rows = [row("dense", s, int(s < dense_exact)) for s in range(16)]
        rows += [row("m", s, 0, compression=c, target=c) for s in range(16) for c in (2.0, 10.0)]
        (m,) = max_tolerable_compression(rows).values()
        assert m.compression is None and m.n_tested == 2
        if dense_exact == 5:
            assert m.n_powered == 0 and m.reason.startswith("untestable: dense is exact on 5 of 16")
        else:
            assert m.n_powered == 2 and m.reason.startswith("significantly worse from compression 2")
    # a powered cell after an unpowered one: only the powered one decides
    rows = [row("dense", s, int(s < 6)) for s in range(16)]
    rows += [row("m", s, int(s < 6), compression=2.0, target=2) for s in range(16)]
    rows += [row("m", s, 0, compression=5.0, target=5) for s in range(3)]   # 3 paired, dense exact on 3
    (m,) = max_tolerable_compression(rows).values()
    assert (m.compression, m.n_tested, m.n_powered) == (2.0, 2, 1)
