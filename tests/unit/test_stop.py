from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from herdsman.tokenizer import StopChecker


def reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Cut at the earliest position where any stop string starts."""
    best, matched = len(text), None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (at < best or (at == best and matched is None)):
            best, matched = at, stop
    return text[:best], matched


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
