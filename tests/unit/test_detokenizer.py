"""Incremental detokenization equals one full decode, for every fixture tokenizer."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fixture_tokenizers import TOKENIZERS, tokenizer

from herdsman.tokenizer import ModelTokenizer
from herdsman.tokenizer.detokenizer import IncrementalDetokenizer


@functools.cache
def id_kinds(name: str) -> tuple[list[int], list[int]]:
    """Ids that are not a whole character alone (they split a multi-byte one), and added tokens."""
    tok = tokenizer(name, fast=False)
    singles = tok.tokenizer.decode_batch(
        [[i] for i in range(tok.vocab_size)], skip_special_tokens=False
    )
    partial = [i for i, text in enumerate(singles) if "\ufffd" in text]
    assert len(partial) > 100  # every byte-level BPE here has byte tokens
    return partial, sorted(tok.tokenizer.get_added_tokens_decoder())


def stream(tok: ModelTokenizer, chunks: list[list[int]], skip: bool) -> str:
    """Stream ``chunks`` through a detokenizer, checking every delta on the way."""
    ids = [i for chunk in chunks for i in chunk]
    full = tok.decode(ids, skip_special_tokens=skip)
    detok = tok.detokenizer(skip_special_tokens=skip)
    emitted = ""
    for chunk in chunks:
        emitted += detok.push(chunk)
        # Text once emitted is final: never a half character that a later id would complete.
        assert full.startswith(emitted), (ids, skip, emitted)
    return emitted + detok.flush()


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_incremental_equals_full_decode(name: str, data: st.DataObject) -> None:
    tok = tokenizer(name)
    partial, added = id_kinds(name)
    any_id = st.integers(0, tok.vocab_size - 1)
    ids = data.draw(
        st.lists(any_id | st.sampled_from(partial) | st.sampled_from(added), max_size=40)
    )
    skip = data.draw(st.booleans())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=4)))
    chunks = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)], strict=True)]
    assert stream(tok, chunks, skip) == tok.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60),
    skip=st.booleans(),
)
def test_encoded_text_streams_without_replacement_chars(name: str, text: str, skip: bool) -> None:
    tok = tokenizer(name)
    ids = tok.encode(text, add_special_tokens=False)
    detok = tok.detokenizer(skip_special_tokens=skip)
    pieces = [detok.push([i]) for i in ids]
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text
    assert "".join(pieces) + detok.flush() == tok.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_multibyte_characters_are_never_split(name: str) -> None:
    tok = tokenizer(name)
    text = "naïve café — 日本語のテキスト 🙂🚀 done"
    ids = tok.encode(text, add_special_tokens=False)
    detok = tok.detokenizer()
    pieces = [detok.push([i]) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert detok.flush() == ""


# A turn of each model's own chat format, and the text left when special tokens are skipped.
TURNS = {
    "qwen3": ("<|im_start|>assistant\nhi<|im_end|>", "assistant\nhi"),
    "llama3": ("<|start_header_id|>assistant<|end_header_id|>\n\nhi<|eot_id|>", "assistant\n\nhi"),
    "deepseek_v3": ("<｜Assistant｜>hi<｜end▁of▁sentence｜>", "<｜Assistant｜>hi"),
    # DeepSeek's <｜Assistant｜> (and V4's <think>) are added tokens but not special ones, so
    # skip_special_tokens keeps them, as transformers does.
    "deepseek_v4": (
        "<｜Assistant｜><think>x</think>hi<｜end▁of▁sentence｜>",
        "<｜Assistant｜><think>x</think>hi",
    ),
    "gpt_oss": ("<|start|>assistant<|channel|>final<|message|>hi<|return|>", "assistantfinalhi"),
}


@pytest.mark.parametrize("name", TOKENIZERS)
def test_special_tokens_skipped_or_kept(name: str) -> None:
    tok = tokenizer(name)
    text, skipped = TURNS[name]
    ids = tok.encode(text, add_special_tokens=False)
    skip = tok.detokenizer(skip_special_tokens=True)
    keep = tok.detokenizer(skip_special_tokens=False)
    assert "".join(skip.push([i]) for i in ids) + skip.flush() == skipped
    assert "".join(keep.push([i]) for i in ids) + keep.flush() == text


# --- output decoded as the prompt's continuation (the stream primed with the prompt) ----------


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_output_is_the_text_it_adds_to_the_prompt(name: str, data: st.DataObject) -> None:
    tok = tokenizer(name)
    partial, added = id_kinds(name)
    text = data.draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30))
    prompt = data.draw(st.lists(st.sampled_from(added), max_size=3)) + tok.encode(
        text, add_special_tokens=False
    )
    out = data.draw(
        st.lists(
            st.integers(0, tok.vocab_size - 1) | st.sampled_from(partial) | st.sampled_from(added),
            max_size=20,
        )
    )
    skip = data.draw(st.booleans())
    detok = tok.detokenizer(skip_special_tokens=skip, context=prompt)
    streamed = "".join(detok.push([i]) for i in out) + detok.flush()
    before = tok.decode(prompt, skip_special_tokens=skip)
    assert streamed == tok.decode(prompt + out, skip_special_tokens=skip)[len(before) :]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_a_character_split_between_prompt_and_output(name: str) -> None:
    tok = tokenizer(name)
    for char in ("🚀", "𝔘", "ﬁ", "👩‍👧", "日本"):
        ids = tok.encode(f"x{char}", add_special_tokens=False)
        head = tok.encode("x", add_special_tokens=False)
        if ids[: len(head)] != head or len(ids) - len(head) < 2:
            continue  # the character is one token here: nothing to split
        prompt, rest = ids[:-1], ids[-1:] + tok.encode(" ok", add_special_tokens=False)
        detok = tok.detokenizer(context=prompt)
        first = detok.push(rest[:1])
        # The prompt's unfinished bytes and the output's last one make the character (or the
        # last of its pieces: the ids before the split that already formed a whole character
        # were the prompt's text).
        assert first and char.endswith(first), (name, char, first)
        assert (
            first + detok.push(rest[1:])
            == tok.decode(ids + rest[1:])[len(tok.decode(ids[:-1]).rstrip("\ufffd")) :]
        )


@pytest.mark.parametrize("name", TOKENIZERS)
def test_a_prompt_ending_in_an_unfinished_character(name: str) -> None:
    """The prompt's unfinished bytes that the output does not complete are shown, as U+FFFD,
    with the first output text (vLLM's detokenizer, primed with the prompt, does the same)."""
    tok = tokenizer(name)
    partial, _ = id_kinds(name)
    out = tok.encode(" consumes", add_special_tokens=False)
    for dangling in partial[:20]:
        detok = tok.detokenizer(context=[dangling])
        pieces = [detok.push([i]) for i in out]
        joined = "".join(pieces)
        assert joined == tok.decode([dangling, *out])
        assert joined.startswith("\ufffd") and joined.endswith(" consumes")


def test_metaspace_output_keeps_the_space_of_its_first_word() -> None:
    """SentencePiece-style decoders drop the leading space of a text's first piece: decoded on
    its own, an answer would lose the space before its first word that the prompt's
    continuation has."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "▁What": 3, "?": 4, "▁": 5}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("[/INST]", special=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, inst = tok.token_to_id("<s>"), tok.token_to_id("[/INST]")
    for skip in (True, False):
        for prompt in ([bos, 3, 4, inst], [bos, 3, 4, *[inst] * 12], [bos, inst], [3]):
            out = [1, 2]
            detok = IncrementalDetokenizer(tok, skip_special_tokens=skip, context=prompt)
            streamed = "".join(detok.push([i]) for i in out)
            before = tok.decode(prompt, skip_special_tokens=skip)
            expected = tok.decode(prompt + out, skip_special_tokens=skip)[len(before) :]
            assert streamed == expected, (skip, prompt)
        # With some text before it, the answer's first word keeps its space.
        detok = IncrementalDetokenizer(tok, context=[bos, 3, 4, inst])
        assert detok.push([1, 2]) == " Hello world"
        assert IncrementalDetokenizer(tok).push([1, 2]) == "Hello world"


# --- one tokenizer copy: fastokens decodes, through WindowStream -------------------------------


@functools.cache
def reference(name: str) -> ModelTokenizer:
    """The same model decoding with ``tokenizers`` (and ``DecodeStream``)."""
    return tokenizer(name, fast=False)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_fixture_models_decode_with_fastokens(name: str) -> None:
    tok = tokenizer(name)
    assert tok.decodes_with == "fastokens"
    assert tok.reference is None  # let go: the process holds one tokenizer
    assert reference(name).decodes_with == "tokenizers"


@pytest.mark.parametrize("name", TOKENIZERS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_window_stream_steps_as_decode_stream(name: str, data: st.DataObject) -> None:
    """Step by step, held back or emitted, the fastokens stream gives what tokenizers'
    DecodeStream gives, primed or not."""
    fast, ref = tokenizer(name), reference(name)
    partial, added = id_kinds(name)
    pick = st.integers(0, fast.vocab_size - 1) | st.sampled_from(partial) | st.sampled_from(added)
    context = data.draw(st.lists(pick, max_size=8))
    ids = data.draw(st.lists(pick, max_size=40))
    skip = data.draw(st.booleans())
    mine = fast.detokenizer(skip_special_tokens=skip, context=context)
    theirs = ref.detokenizer(skip_special_tokens=skip, context=context)
    assert [mine.push([i]) for i in ids] == [theirs.push([i]) for i in ids]
    assert mine.flush() == theirs.flush()


@pytest.mark.parametrize("name", TOKENIZERS)
def test_fastokens_decodes_as_tokenizers(name: str) -> None:
    fast, ref = tokenizer(name), reference(name)
    partial, added = id_kinds(name)
    for ids in ([*partial[:50], *added[:50]], added, list(range(0, fast.vocab_size, 97))):
        for skip in (True, False):
            assert fast.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip
            )
    for i in [*partial[:20], *added[:20], 0, fast.vocab_size - 1]:
        assert fast.token_text(i) == ref.token_text(i)
        assert fast.token_piece(i) == ref.token_piece(i)


def test_window_stream_refuses_a_text_that_is_not_monotonic() -> None:
    """DecodeStream fails a step whose text no longer starts with what it emitted; so does
    WindowStream, and the detokenizer then decodes the output on its own."""
    from herdsman.tokenizer.detokenizer import InvalidPrefix, WindowStream

    class Rewriting:  # decodes id 1 after anything else as a rewrite of the text before it
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return "xyz" if ids and ids[-1] == 1 and len(ids) > 1 else "ab" * len(ids)

    stream = WindowStream(True)
    assert stream.step(Rewriting(), 0) == "ab"
    with pytest.raises(InvalidPrefix):
        stream.step(Rewriting(), 1)
    assert IncrementalDetokenizer(Rewriting(), context=[0, 1]).push([0]) == "ab"
