import pytest

from memo.errors import InvalidInput, UnsupportedMediaType
from memo.ingest.archive import MAX_UNPACKED
from memo.ingest.chunk import chunk_text, split_sentences
from memo.ingest.parse import parse, validate_upload
from memo.ingest.structure import is_structured, read_sentences, split_label


def test_split_sentences_keeps_abbreviation_free_sentences_apart():
    text = "Alpha is first. Beta costs $3.50 per unit!\n\nGamma? Delta ends here."
    assert split_sentences(text) == ["Alpha is first.", "Beta costs $3.50 per unit!", "Gamma?", "Delta ends here."]


def test_chunks_respect_size_and_overlap():
    sentences = [f"Sentence number {i} has exactly seven words." for i in range(30)]  # 7 words each
    chunks = chunk_text(" ".join(sentences), words=50, overlap=14)
    assert len(chunks) > 3
    for c in chunks:
        assert len(c.split()) <= 50
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        tail = split_sentences(prev)[-2:]
        assert split_sentences(nxt)[:2] == tail  # two 7-word sentences = 14 words of overlap
    joined = set()
    for c in chunks:
        joined.update(split_sentences(c))
    assert joined == set(sentences)  # nothing lost


def test_overlong_sentence_is_split():
    chunks = chunk_text(" ".join(["word"] * 95) + ".", words=40, overlap=5)
    assert [len(c.split()) for c in chunks] == [40, 40, 15]


def test_markdown_keeps_its_structure_in_a_normal_form():
    md = b"# Title\n\nSome **bold** text with a [link](http://x).\n\n- item one\n\n```\ncode\n```\n"
    text = parse(md, "text/markdown")
    assert text == "# Title\n\nSome bold text with a link.\n\n- item one"
    assert "**" not in text and "http://x" not in text and "code" not in text
    # the plain sentences have no marks
    assert split_sentences(text) == ["Title.", "Some bold text with a link.", "item one."]


def test_tables_become_items_labelled_by_their_headers():
    md = (
        b"## Limits\n\n| City | Hotel cap | Notes |\n|---|:---:|---|\n| Port Emberly | $245 | higher prices |\n"
        b"| Varnholt | $189 | |\n\nAfter the table.\n"
    )
    text = parse(md, "text/markdown")
    assert text.split("\n\n") == [
        "## Limits",
        "- Port Emberly hotel cap: $245; Port Emberly: higher prices.",
        "- Varnholt hotel cap: $189.",
        "After the table.",
    ]


def test_underlined_headings_and_rules():
    md = b"Acme Policy\n===========\n\nIntro text.\n\n---\n\nHotels\n------\nCaps apply.\n"
    assert parse(md, "text/markdown").split("\n\n") == ["# Acme Policy", "Intro text.", "## Hotels", "Caps apply."]


def test_list_items_and_their_continuation_lines_stay_one_paragraph():
    md = b"Intro:\n* first item\n  continues here\n2) second item\n\nAfter.\n"
    assert parse(md, "text/markdown").split("\n\n") == [
        "Intro:",
        "- first item continues here",
        "2. second item",
        "After.",
    ]


def test_sentences_are_read_back_with_their_headings_and_item_labels():
    md = (
        b"# Acme - Leave Policy\n\n## Other leave\n\n- Bereavement: 5 days. Ask your manager first.\n\n"
        b"- Send the form to HR. Owner: Jo Park.\n\n## Pay\n\nSalaries are paid monthly.\n"
    )
    got = [(s.text, s.context, s.kind) for s in read_sentences(parse(md, "text/markdown"))]
    assert got == [
        ("Acme - Leave Policy", (), "heading"),
        ("Other leave", ("Acme - Leave Policy",), "heading"),
        ("Bereavement: 5 days.", ("Acme - Leave Policy", "Other leave", "Bereavement"), "item"),
        ("Ask your manager first.", ("Acme - Leave Policy", "Other leave", "Bereavement"), "item"),
        ("Send the form to HR.", ("Acme - Leave Policy", "Other leave"), "item"),
        # a later sentence of an unlabelled item is about its first one
        ("Owner: Jo Park.", ("Acme - Leave Policy", "Other leave", "Send the form to HR"), "item"),
        ("Pay", ("Acme - Leave Policy",), "heading"),
        ("Salaries are paid monthly.", ("Acme - Leave Policy", "Pay"), "text"),
    ]
    assert is_structured(parse(md, "text/markdown"))
    assert not is_structured(parse(b"# A story\n\nTom walked home. He slept.\n", "text/markdown"))
    assert is_structured(parse(b"# Hotels\n\nCaps apply.\n\n# Meals\n\n$40 a day.\n", "text/markdown"))


def test_labels_are_short_and_not_clock_times():
    assert split_label("Severity: SEV-2.") == ("Severity", "SEV-2.")
    assert split_label("pH range: 0 to 14") == ("pH range", "0 to 14")
    assert split_label("06:42 UTC was the start.") is None
    assert split_label("The one exception, which is rare, is this: none") is None


def test_every_chunk_of_a_structured_text_opens_with_its_headings():
    sections = "\n\n".join(
        f"## Section {i}\n\n" + " ".join(f"Rule {i}.{j} of the Zorblax policy applies today." for j in range(6))
        for i in range(6)
    )
    text = parse(f"# Zorblax Policy\n\n{sections}".encode(), "text/markdown")
    chunks = chunk_text(text, words=60, overlap=10)
    assert len(chunks) > 4
    for c in chunks:
        assert c.startswith("# Zorblax Policy\n\n")
        assert len(c.split()) <= 60
        first = [s for s in read_sentences(c) if s.kind != "heading"][0]
        section = first.text.split()[1].split(".")[0]
        assert first.headings == ("Zorblax Policy", f"Section {section}")
    covered = {s for c in chunks for s in split_sentences(c)}
    assert covered == set(split_sentences(text))  # nothing lost


@pytest.mark.parametrize("name", ["report.pptx", "noext", "image.PNG"])
def test_unsupported_types_are_refused(name):
    with pytest.raises(UnsupportedMediaType, match="unsupported file type"):
        validate_upload(name, b"hello", MAX_UNPACKED)


def test_empty_and_binary_uploads_are_refused():
    with pytest.raises(InvalidInput, match="empty"):
        validate_upload("a.txt", b"  \n ", MAX_UNPACKED)
    with pytest.raises(InvalidInput, match="UTF-8"):
        validate_upload("a.txt", b"\xff\xfebad", MAX_UNPACKED)
    assert validate_upload("A.MD", "héllo".encode(), MAX_UNPACKED) == "text/markdown"


def test_titles_and_list_items_stay_separate_sentences():
    md = b"# About Acme\nAcme sells red boxes.\n- Boxes cost $4\n- Lids cost $1\n"
    text = parse(md, "text/markdown")
    assert split_sentences(text) == ["About Acme.", "Acme sells red boxes.", "Boxes cost $4.", "Lids cost $1."]
    # joining into a chunk keeps the boundaries
    assert split_sentences(chunk_text(text, words=100, overlap=0)[0]) == split_sentences(text)
