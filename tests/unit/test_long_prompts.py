"""Long prompts are encoded off the event loop, with the same ids as a plain encode."""

from __future__ import annotations

import asyncio
import random
import string

import pytest
from tests.conftest import LLAMA3, QWEN3

from herdsman.tokenizer import load_model_tokenizer
from herdsman.tokenizer.tokenizer import ModelTokenizer

BACKENDS = {
    (path.name, fast): load_model_tokenizer(path, fast=fast)
    for path in (QWEN3, LLAMA3)
    for fast in (False, True)
}


def varied_text(rng: random.Random, words: int) -> str:
    pool = [*string.ascii_letters, "_", "日本語", "🙂", "é"]
    return " ".join("".join(rng.choices(pool, k=rng.randint(1, 9))) for _ in range(words))


def long_chat(tokenizer: ModelTokenizer, seed: int, turns: int) -> str:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": varied_text(rng, 300)}]
    for _ in range(turns):
        messages.append({"role": "user", "content": varied_text(rng, 3000)})
        messages.append({"role": "assistant", "content": varied_text(rng, 200)})
    assert tokenizer.chat_template is not None
    return tokenizer.chat_template.render(messages)


async def encode_while_ticking(tokenizer: ModelTokenizer, text: str, special: bool):
    """The ids, and how often another task ran on the loop while they were encoded."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    ids = await tokenizer.encode_async(text, add_special_tokens=special)
    seen = ticks
    done = True
    await task
    return ids, seen


@pytest.mark.parametrize(
    "key", sorted(BACKENDS), ids=lambda k: f"{k[0]}-{'fast' if k[1] else 'hf'}"
)
@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_long_text_ids_equal_a_plain_encode(key, cache: bool) -> None:
    tokenizer = BACKENDS[key]
    tokenizer.enable_cache(1 << 24 if cache else 0, 1 << 24 if cache else 0)
    reference = load_model_tokenizer(QWEN3 if key[0] == "qwen3" else LLAMA3, fast=False)
    first = long_chat(tokenizer, 1, 3)
    later = long_chat(tokenizer, 1, 6)  # the same chat three turns on: some segments cached
    plain_text = varied_text(random.Random(2), 12_000)  # no special tokens at all
    assert len(first) >= tokenizer.long_text_chars
    # A templated chat carries its special tokens; a plain text gets BOS (where the model has one).
    for text, special in ((first, False), (later, False), (later, False), (plain_text, True)):
        ids, _ = asyncio.run(encode_while_ticking(tokenizer, text, special))
        assert ids == reference._raw_encode(text, special)


@pytest.mark.parametrize("fast", [False, True], ids=["hf", "fast"])
def test_the_loop_keeps_running_while_a_long_prompt_is_encoded(fast: bool) -> None:
    tokenizer = BACKENDS[("qwen3", fast)]
    tokenizer.enable_cache(0, 0)
    text = varied_text(random.Random(3), 40_000)
    ids, ticks = asyncio.run(encode_while_ticking(tokenizer, text, False))
    assert len(ids) > 40_000
    assert ticks > 0  # the plain `encode` would have held the loop: zero ticks


def test_short_texts_stay_on_the_loop() -> None:
    tokenizer = BACKENDS[("qwen3", False)]
    tokenizer.enable_cache(0, 0)
    ids, ticks = asyncio.run(encode_while_ticking(tokenizer, "hello there", False))
    assert ids == tokenizer.encode("hello there", add_special_tokens=False)
    assert ticks == 0  # no thread hop for work that takes microseconds
