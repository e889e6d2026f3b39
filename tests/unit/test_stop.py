from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fixture_tokenizers import TOKENIZERS, tokenizer

from herdsman.tokenizer import StopChecker


def reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Read the text one character at a time and cut at the first stop string that completes
    (when several complete at once, the first in the list: vLLM's ``check_stop_strings``)."""
    for end in range(1, len(text) + 1):
        done = [stop for stop in stops if text.endswith(stop, 0, end)]
        if done:
            stop = done[0]
            return text[: end - len(stop)], stop
    return text, None


alphabet = st.sampled_from("ab c\n🙂")


@given(
    pieces=st.lists(st.text(alphabet, max_size=6), max_size=12),
    stops=st.lists(st.text(alphabet, min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_streamed_equals_one_shot(pieces: list[str], stops: list[str]) -> None:
    checker = StopChecker(stops)
    out = "".join(checker.feed(p) for p in pieces) + checker.flush()
    expected, matched = reference("".join(pieces), stops)
    assert out == expected
    assert (checker.matched is None) == (matched is None)


@settings(max_examples=300)
@given(data=st.data(), keep=st.booleans())
def test_chunking_does_not_matter(data: st.DataObject, keep: bool) -> None:
    text = data.draw(st.text(alphabet, max_size=30))
    piece_of_text = st.tuples(st.integers(0, len(text)), st.integers(1, 5)).map(
        lambda p: text[p[0] : p[0] + p[1]] or "c"
    )
    stops = data.draw(
        st.lists(piece_of_text | st.text(alphabet, min_size=1, max_size=4), min_size=1, max_size=3)
    )
    results = []
    for _ in range(2):
        points = data.draw(st.lists(st.integers(1, max(len(text) - 1, 1)), max_size=8))
        bounds = sorted({0, len(text), *(p for p in points if p < len(text))})
        checker = StopChecker(stops, keep_stop=keep)
        out = "".join(checker.feed(text[a:b]) for a, b in pairwise(bounds))
        results.append((out + checker.flush(), checker.matched))
    assert results[0] == results[1]
    assert results[0] == (reference(text, stops)[0] + (results[0][1] or "") * keep, results[0][1])


def test_a_stop_completed_first_wins_over_a_longer_one_started_earlier() -> None:
    # "b" is complete one character before "aba" could be: the stop is "b", whatever the chunks.
    for pieces in (["a", "b", "a"], ["aba"], ["ab", "a"]):
        checker = StopChecker(["aba", "b"])
        assert "".join(checker.feed(p) for p in pieces) + checker.flush() == "a"
        assert checker.matched == "b"


def test_stops_completing_together_go_by_list_order() -> None:
    # "ab" and "b" both complete at the "b": vLLM takes the one listed first.
    for stops, out in ((["b", "ab"], "a"), (["ab", "b"], "")):
        checker = StopChecker(stops)
        assert checker.feed("ab") + checker.flush() == out
        assert checker.matched == stops[0]


def test_holds_back_partial_match_and_releases_it() -> None:
    checker = StopChecker(["STOP"])
    assert checker.feed("hello ST") == "hello "
    assert checker.feed("ay") == "STay"
    assert checker.feed(" ST") == " "
    assert checker.flush() == "ST"
    assert checker.matched is None


def test_nothing_after_a_match() -> None:
    checker = StopChecker(["\n\n"])
    assert checker.feed("one\n") == "one"
    assert checker.feed("\ntwo") == ""
    assert checker.matched == "\n\n"
    assert checker.feed("three") == ""
    assert checker.flush() == ""


@given(
    pieces=st.lists(st.text(alphabet, max_size=6), max_size=12),
    stops=st.lists(st.text(alphabet, min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_keep_stop_includes_the_match(pieces: list[str], stops: list[str]) -> None:
    checker = StopChecker(stops, keep_stop=True)
    out = "".join(checker.feed(p) for p in pieces) + checker.flush()
    expected, matched = reference("".join(pieces), stops)
    if matched is None:
        assert out == expected
    else:
        assert checker.matched is not None
        assert out == expected + checker.matched
        assert "".join(pieces).startswith(out)


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_stops_over_each_tokenizers_deltas(name: str, data: st.DataObject) -> None:
    """Streamed deltas as each tokenizer's detokenizer cuts them (multi-byte characters held
    back, special tokens skipped) stop exactly where the whole text does."""
    tok = tokenizer(name)
    sample = data.draw(st.text(st.sampled_from("ab \n日🙂é"), max_size=30))
    ids = tok.encode(sample, add_special_tokens=False)
    full = tok.decode(ids)
    stops = data.draw(
        st.lists(
            st.text(st.sampled_from("ab \n日🙂é"), min_size=1, max_size=3)
            | st.integers(0, max(len(full) - 1, 0)).map(lambda i: full[i : i + 2] or "x"),
            min_size=1,
            max_size=3,
        )
    )
    detok = tok.detokenizer()
    checker = StopChecker(stops)
    out = "".join(checker.feed(detok.push([i])) for i in ids)
    out += checker.feed(detok.flush()) + checker.flush()
    expected, matched = reference(full, stops)
    assert out == expected
    assert (checker.matched is None) == (matched is None)
