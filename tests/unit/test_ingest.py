import pytest

from memo.errors import InvalidInput, UnsupportedMediaType
from memo.ingest.chunk import chunk_text, split_sentences
from memo.ingest.parse import parse, validate_upload


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


def test_markdown_is_flattened():
    md = b"# Title\n\nSome **bold** text with a [link](http://x).\n\n- item one\n\n```\ncode\n```\n"
    text = parse(md, "text/markdown")
    assert "Title" in text and "bold" in text and "link" in text and "item one" in text
    assert "**" not in text and "http://x" not in text and "code" not in text and "#" not in text


@pytest.mark.parametrize("name", ["report.pdf", "noext", "image.PNG"])
def test_unsupported_types_are_refused(name):
    with pytest.raises(UnsupportedMediaType, match="unsupported file type"):
        validate_upload(name, b"hello")


def test_empty_and_binary_uploads_are_refused():
    with pytest.raises(InvalidInput, match="empty"):
        validate_upload("a.txt", b"  \n ")
    with pytest.raises(InvalidInput, match="UTF-8"):
        validate_upload("a.txt", b"\xff\xfe\x00bad")
    assert validate_upload("A.MD", "héllo".encode()) == "text/markdown"


def test_titles_and_list_items_stay_separate_sentences():
    md = b"# About Acme\nAcme sells red boxes.\n- Boxes cost $4\n- Lids cost $1\n"
    text = parse(md, "text/markdown")
    assert split_sentences(text) == ["About Acme.", "Acme sells red boxes.", "Boxes cost $4.", "Lids cost $1."]
    # joining into a chunk keeps the boundaries
    assert split_sentences(chunk_text(text, words=100, overlap=0)[0]) == split_sentences(text)
