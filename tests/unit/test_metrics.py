from memo.eval.metrics import normalise, recalled, token_f1


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
