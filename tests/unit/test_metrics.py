import pytest

from benchmarks.metrics import best_over, exact_match, normalise, recalled, rouge_l, score_answer, token_f1


def test_normalise():
    assert normalise("The  Cat, sat!") == "cat sat"


def test_token_f1():
    assert token_f1("red box", "the red box") == 1.0
    assert token_f1("blue", "red") == 0.0
    assert abs(token_f1("a red big box", "red box") - 0.8) < 1e-9


def test_recalled():
    assert recalled("The Zorblax cap is $217 per night.", "$217 per night")
    assert not recalled("I don't know.", "217")
    assert not recalled("anything", "")
    assert not recalled("Employees get 18 days, 2 of them paid.", "8 days")  # whole words, not a substring
    assert recalled("It is 8 days.", "8 days")
    # token F1 >= 0.5 counts only with every number of the reference: another number is a wrong answer
    assert not recalled("7 days", "14 days")
    assert not recalled("within 10 business days", "within 30 days")
    assert not recalled("$705 per mile", "$0.64 per mile")
    assert recalled("at least 14 days before", "14 days ahead")
    assert recalled("the Wayfarer booking portal", "the Wayfarer portal")


def test_exact_match_uses_squad_normalisation():
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    assert exact_match("", "") == 1.0


def test_rouge_l_is_lcs_f1():
    assert rouge_l("red big box", "red box") == 0.8  # lcs 2: precision 2/3, recall 1
    assert rouge_l("box red", "red box") == 0.5  # order matters, unlike token F1
    assert token_f1("box red", "red box") == 1.0
    assert rouge_l("", "red box") == 0.0
    assert rouge_l("a high school student in phoenix", "He is a high school student in Phoenix.") == pytest.approx(
        2 * 1.0 * (5 / 7) / (1.0 + 5 / 7)
    )


def test_scores_are_the_best_over_references():
    refs = ["He is a high school student in Phoenix.", "A loner and outsider student with a radio station."]
    s = score_answer("a loner student", refs)
    assert s["em"] == 0.0
    assert s["f1"] == pytest.approx(token_f1("a loner student", refs[1]))
    assert s["f1"] > token_f1("a loner student", refs[0])
    assert s["rouge_l"] == pytest.approx(max(rouge_l("a loner student", r) for r in refs))
    assert score_answer("Stanley Hall", ["G. Stanley Hall", "Stanley Hall"])["em"] == 1.0
    assert best_over(exact_match, "x", []) == 0.0
