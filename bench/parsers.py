"""Per-token cost of the streaming reasoning and tool-call parsers, beside detokenization.

    python -m bench.parsers [--repeat 30]

For each parser, a realistic output of about 500 tokens in its model's format (prose reasoning
or content around tool calls written as the tests' vectors write them, from the vendors'
templates) is tokenized with the bundled Qwen3 tokenizer, turned back into the text deltas the
gateway's incremental detokenizer produces, and fed to the parser one delta per token. The
detokenizer's own cost on the same ids is the yardstick: a parser should cost no more per token.
Run from the repository root (it borrows the call renderers from tests/parsers/vectors.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from tests.parsers.vectors import CALL_SETS, RENDERERS, TOOLS

from herdsman.parsers import registry
from herdsman.parsers.reasoning import ThinkTagReasoningParser
from herdsman.tokenizer import ModelTokenizer, load_model_tokenizer

ROOT = Path(__file__).resolve().parent.parent

PROSE = (
    "The user wants to know whether the train from Zürich reaches Milano before the museum "
    "closes. First, the timetable: the EuroCity leaves at 09:33 and arrives at 12:50, so with "
    "a ten-minute walk they would be at the door around 13:05. The museum's winter hours are "
    "10:00 to 18:00 except Mondays, when it is closed. The date they gave is a Thursday, so "
    "that is fine. Ticket prices: €15 full, €8 reduced for students under 26; they mentioned "
    "being 24 and a student, so €8 applies if they carry the card. One caveat — the special "
    "exhibition needs a timed entry slot, and slots after 16:00 sell out early on weekdays "
    "during December. I should suggest booking the 14:00 or 14:30 slot online, which leaves "
    "slack if the train is late (delays of 10–20 minutes are common at the border at Chiasso). "
    "Also mention the return: the last direct train back leaves at 18:25, which is tight after "
    "closing at 18:00 but doable since the station is 15 minutes away by metro line M2. "
)


def _reasoning_text(name: str) -> str:
    cls = registry.get_reasoning_parser(name)
    answer = "Yes: take the 09:33 EuroCity, book the 14:00 slot, and the €8 student ticket. " * 3
    if issubclass(cls, ThinkTagReasoningParser):
        return f"{cls.start}\n{PROSE * 2}\n{cls.end}\n\n{answer}"
    return (
        f"<|channel|>analysis<|message|>{PROSE * 2}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{answer}<|return|>"
    )


def _tool_text(name: str) -> str:
    render, text_first = RENDERERS[name]
    calls = (CALL_SETS["parallel"] + CALL_SETS["nested"] + CALL_SETS["unicode"]) * 2
    if text_first and name != "openai":
        return f"{PROSE}\n\n{render(calls)}"
    if name == "openai":
        return f"<|channel|>final<|message|>{PROSE}<|end|>{render(calls)}"
    return render(calls * 3)


def _deltas(tokenizer: ModelTokenizer, ids: list[int]) -> list[str]:
    detok = tokenizer.detokenizer(skip_special_tokens=False)
    return [detok.push([i]) for i in ids]


def _best_of(repeat: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--model", default=str(ROOT / "models" / "qwen3"))
    args = parser.parse_args()

    tokenizer = load_model_tokenizer(args.model)
    rows: list[tuple[str, str, int, float, float]] = []

    def measure(
        kind: str, name: str, text: str, make: Callable[[], Callable[[str], object]]
    ) -> None:
        ids = tokenizer.encode(text, add_special_tokens=False)
        deltas = _deltas(tokenizer, ids)
        assert "".join(deltas) == text

        def detokenize() -> None:
            push = tokenizer.detokenizer(skip_special_tokens=False).push
            for i in ids:
                push([i])

        def parse() -> None:
            feed = make()
            for delta in deltas:
                feed(delta)

        detok = _best_of(args.repeat, detokenize) / len(ids) * 1e6
        cost = _best_of(args.repeat, parse) / len(ids) * 1e6
        rows.append((kind, name, len(ids), cost, detok))

    for name in registry.reasoning_parser_names():
        cls = registry.get_reasoning_parser(name)

        def make_reasoning(cls: type = cls) -> Callable[[str], object]:
            return cls().feed

        measure("reasoning", name, _reasoning_text(name), make_reasoning)
    for name in registry.tool_call_parser_names():
        tool_cls = registry.get_tool_call_parser(name)

        def make_tool(cls: type = tool_cls) -> Callable[[str], object]:
            return cls(TOOLS).feed

        measure("tool", name, _tool_text(name), make_tool)

    print(
        f"{'kind':<10} {'parser':<16} {'tokens':>6} {'parser µs/tok':>14} "
        f"{'detok µs/tok':>13} {'ratio':>6}"
    )
    for kind, name, count, cost, detok in rows:
        print(f"{kind:<10} {name:<16} {count:>6} {cost:>14.3f} {detok:>13.3f} {cost / detok:>6.2f}")
    worst = max(rows, key=lambda r: r[3] / r[4])
    print(f"\nworst ratio: {worst[1]} ({worst[0]}) at {worst[3] / worst[4]:.2f}x detokenization")


if __name__ == "__main__":
    main()
