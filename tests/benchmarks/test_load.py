"""The load benchmark's own figures (benchmarks/load.py): summaries, ratios, windows. No timing."""

from __future__ import annotations

from benchmarks.load import (
    handbook_files,
    ratios,
    recorder,
    split_by_window,
    summarise,
    summarise_samples,
    worded,
)


def test_summarise_counts_rate_and_percentiles():
    latencies = [float(i) for i in range(1, 101)]  # 1..100 s
    s = summarise(latencies, errors=2, wall=50.0)
    assert s["queries"] == 100 and s["errors"] == 2 and s["qps"] == 2.0
    assert s["p50_s"] == 50.5 and 99 <= s["p99_s"] <= 100 and s["max_s"] == 100.0


def test_summarise_of_nothing_answered_has_no_percentiles():
    s = summarise([], errors=3, wall=10.0)
    assert s["queries"] == 0 and s["errors"] == 3 and s["qps"] == 0.0 and s["p99_s"] is None


def test_ratios_are_medians_over_the_smallest_k():
    r = ratios({1: [2.0, 1.0, 1.0], 8: [1.5, 9.0, 1.5], 2: [1.2, 1.2, 5.0]})
    assert r == {1: 1.0, 2: 1.2, 8: 1.5}


def test_samples_split_at_the_upload_and_errors_counted_by_status():
    samples = []
    record = recorder(samples)
    for end, status in ((1.0, 200), (2.0, 200), (3.0, 504), (4.0, 200), (5.0, 0), (9.0, 200)):
        record(end, 0.5, status)
    before, within = split_by_window(samples, start=2.5, end=6.0)
    assert [x[0] for x in before] == [1.0, 2.0] and [x[0] for x in within] == [3.0, 4.0, 5.0]
    s = summarise_samples(within, wall=3.5)
    assert s["queries"] == 1 and s["errors"] == 2 and s["statuses"] == {"504": 1, "0": 1}


def test_handbook_files_are_cut_at_a_paragraph():
    files = handbook_files(2, max_words=80)
    assert len(files) == 2 and all(name.endswith(".md") for name, _ in files)
    for _, data in files:
        paragraphs = data.decode().split("\n\n")
        assert paragraphs[0].startswith("# ")  # the title; more paragraphs only within the budget
        assert len(paragraphs) == 1 or len(data.split()) <= 80


def test_every_query_of_a_run_is_worded_differently_around_the_same_questions():
    questions = ["Who founded Zorblax?", "Where is Zorblax headquartered?", "When was it founded?"]
    asked = [worded(questions, n) for n in range(len(questions) * 100)]
    assert len(set(asked)) == len(asked)
    assert all(questions[n % 3] in q for n, q in enumerate(asked)) and asked[:3] == questions
