"""The standard workload: deterministic multi-turn chats whose successive turns share long prefixes.

Conversation k is a system prompt followed by user/assistant turns. Its request t carries the
system prompt, every earlier turn and a new user message, so each request extends the previous
one token for token: what makes a real engine's prefix cache (and the engine-sim's) hit.

Message texts come from pools of English-like text, each cut to a token count measured with the
model's own tokenizer. Conversations pick pool entries with a RNG seeded by (seed, k), so any
client process rebuilds the same conversation k without coordination, and conversations are
distinct combinations while the pools stay small enough to build in well under a second.

Prompt token ids for the gRPC floor are concatenations of per-piece ids. That equals tokenizing
the rendered chat template as a whole, because every piece is delimited by special tokens and
starts with a letter after a newline (tests/bench checks this against the real template).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

# Common English words; sampled uniformly they tokenize at about 1.1 tokens per word.
_WORD_TEXT = """
the of and to in is that it for was on are as with his they be at one have this from by hot
word but what some we can out other were all there when up use your how said an each she which
do their time if will way about many then them write would like so these her long make thing see
him two has look more day could go come did number sound no most people my over know water than
call first who may down side been now find any new work part take get place made live where after
back little only round man year came show every good me give our under name very through just
form sentence great think say help low line differ turn cause much mean before move right boy old
too same tell does set three want air well also play small end put home read hand port large
spell add even land here must big high such follow act why ask men change went light kind off
need house picture try us again animal point mother world near build self earth father head stand
own page should country found answer school grow study still learn plant cover food sun four
between state keep eye never last let thought city tree cross farm hard start might story saw far
sea draw left late run while press close night real life few north open seem together next white
children begin got walk example ease paper group always music those both mark often letter until
mile river car feet care second book carry took science eat room friend began idea fish mountain
stop once base hear horse cut sure watch color face wood main enough plain girl usual young ready
above ever red list though feel talk bird soon body dog family direct pose leave song measure door
product black short numeral class wind question happen complete ship area half rock order fire
south problem piece told knew pass since top whole king space heard best hour better true during
hundred five remember step early hold west ground interest reach fast verb sing listen six table
travel less morning ten simple several vowel toward war lay against pattern slow center love
person money serve appear road map rain rule govern pull cold notice voice unit power town fine
certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able
pound done beauty drive stood contain front teach week final gave green quick develop ocean warm
free minute strong special mind behind clear tail produce fact street inch multiply nothing course
stay wheel full force blue object decide surface deep moon island foot system busy test record
boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate
miss brought heat snow tire bring yes distant fill east paint language among grand ball yet wave
drop heart present heavy dance engine position arm wide sail material size vary settle speak
weight general ice matter circle pair include divide syllable felt perhaps pick sudden count
square reason length represent art subject region energy hunt probable bed brother egg ride cell
believe fraction forest sit race window store summer train sleep prove lone leg exercise wall
catch mount wish sky board joy winter sat written wild instrument kept glass grass cow job edge
sign visit past soft fun bright gas weather month million bear finish happy hope flower clothe
strange gone jump baby eight village meet root buy raise solve metal whether push seven paragraph
third shall held hair describe cook floor either result burn hill safe cat century consider type
law bit coast copy phrase silent tall sand soil roll temperature finger industry value fight lie
beat excite natural view sense ear else quite broke case middle kill son lake moment scale loud
spring observe child straight consonant nation dictionary milk speed method organ pay age section
dress cloud surprise quiet stone tiny climb cool design poor lot experiment bottom key iron single
stick flat twenty skin smile crease hole trade melody trip office receive row mouth exact symbol
die least trouble shout except wrote seed tone join suggest clean break lady yard rise bad blow
oil blood touch grew cent mix team wire cost lost brown wear garden equal sent choose fell fit
flow fair bank collect save control decimal gentle woman captain practice separate difficult
doctor please protect noon whose locate ring character insect caught period indicate radio spoke
atom human history effect electric expect crop modern element hit student corner party supply
bone rail imagine provide agree thus capital chair danger fruit rich thick soldier process operate
guess necessary sharp wing create neighbor wash bat rather crowd corn compare poem string bell
depend meat rub tube famous dollar stream fear sight thin triangle planet hurry chief colony clock
mine tie enter major fresh search send yellow gun allow print dead spot desert suit current lift
rose continue block chart hat sell success company subtract event particular deal swim term
opposite wife shoe shoulder spread arrange camp invent cotton born determine quart nine truck
noise level chance gather shop stretch throw shine property column molecule select wrong gray
repeat require broad prepare salt nose plural anger claim continent oxygen sugar death pretty
skill women season solution magnet silver thank branch match suffix especially fig afraid huge
sister steel discuss forward similar guide experience score apple bought led pitch coat mass card
band rope slip win dream evening condition feed tool total basic smell valley nor double seat
arrive master track parent shore division sheet substance favor connect post spend chord fat glad
original share station dad bread charge proper bar offer segment slave duck instant market degree
populate chick dear enemy reply drink occur support speech nature range steam motion path liquid
log meant quotient teeth shell neck
"""
WORDS = _WORD_TEXT.split()

MAX_PROMPT_TOKENS = 4096
SYSTEM_TOKENS = (920, 1300)
USER_TOKENS = (80, 360)
ASSISTANT_TOKENS = (96, 160)
TURNS = (4, 10)
POOL_SIZES = {"system": 64, "user": 512, "assistant": 512}


@dataclass(frozen=True, slots=True)
class Piece:
    text: str
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Turn:
    conversation: int
    index: int
    messages: list[dict[str, str]]
    prompt_tokens: int
    prompt_ids: list[int] | None


def _sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(6, 18))
    if len(words) > 8 and rng.random() < 0.4:
        words[rng.randint(3, len(words) - 3)] += ","
    return " ".join(words).capitalize() + "."


def make_text(tokenizer: Tokenizer, rng: random.Random, tokens: int) -> Piece:
    """English-like text of about `tokens` tokens, ending on a whole word and a full stop."""
    sentences: list[str] = []
    words = 0
    # Over-produce (words run above one token each), then cut at the target token's end.
    while words < tokens:
        sentences.append(_sentence(rng))
        words += sentences[-1].count(" ") + 1
    full = " ".join(sentences)
    encoding = tokenizer.encode(full, add_special_tokens=False)
    text = full
    if len(encoding.ids) > tokens:
        cut = encoding.offsets[tokens - 1][1]
        text = full[:cut]
        if full[cut : cut + 1].isalpha():
            # The cut fell inside a word: drop the fragment.
            text = text.rsplit(" ", 1)[0]
        text = text.rstrip(" ,.") + "."
    return Piece(text, tuple(tokenizer.encode(text, add_special_tokens=False).ids))


class Workload:
    """Builds conversation k of the stream for `seed`, identically in every process."""

    def __init__(self, tokenizer_file: str | Path, seed: int = 0) -> None:
        self.seed = seed
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        rng = random.Random(f"herdsman-bench-pools-{seed}")

        def pool(name: str, bounds: tuple[int, int]) -> list[Piece]:
            return [
                make_text(tokenizer, rng, rng.randint(*bounds)) for _ in range(POOL_SIZES[name])
            ]

        self.system = pool("system", SYSTEM_TOKENS)
        self.user = pool("user", USER_TOKENS)
        self.assistant = pool("assistant", ASSISTANT_TOKENS)

        def ids(text: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(text, add_special_tokens=False).ids)

        # Qwen3's chat template (ChatML): <|im_start|>role\n content <|im_end|>\n ...
        self.head = {role: ids(f"<|im_start|>{role}\n") for role in ("system", "user", "assistant")}
        self.tail = ids("<|im_end|>\n")
        self.generation_prompt = self.head["assistant"]

    def _message_tokens(self, role: str, piece: Piece) -> int:
        return len(self.head[role]) + len(piece.ids) + len(self.tail)

    def plan(self, k: int) -> tuple[Piece, list[tuple[Piece, Piece]]]:
        """The system prompt and (user, assistant) turns of conversation k."""
        rng = random.Random(self.seed * 1_000_003 + k)
        system = rng.choice(self.system)
        turns: list[tuple[Piece, Piece]] = []
        context = self._message_tokens("system", system)
        for _ in range(rng.randint(*TURNS)):
            user, reply = rng.choice(self.user), rng.choice(self.assistant)
            prompt = context + self._message_tokens("user", user) + len(self.generation_prompt)
            if turns and prompt > MAX_PROMPT_TOKENS:
                break
            turns.append((user, reply))
            context += self._message_tokens("user", user) + self._message_tokens("assistant", reply)
        return system, turns

    def conversation(self, k: int, *, with_ids: bool = False) -> Iterator[Turn]:
        """The requests of conversation k in order; each extends the previous one."""
        system, turns = self.plan(k)
        messages: list[dict[str, str]] = [{"role": "system", "content": system.text}]
        ids: list[int] = [*self.head["system"], *system.ids, *self.tail]
        for index, (user, reply) in enumerate(turns):
            messages.append({"role": "user", "content": user.text})
            ids += self.head["user"]
            ids += user.ids
            ids += self.tail
            prompt_tokens = len(ids) + len(self.generation_prompt)
            prompt_ids = [*ids, *self.generation_prompt] if with_ids else None
            yield Turn(k, index, list(messages), prompt_tokens, prompt_ids)
            # The earlier reply comes from the pool, not from the engine: every target then
            # sees byte-identical prompts whatever text its engine produced.
            messages.append({"role": "assistant", "content": reply.text})
            ids += self.head["assistant"]
            ids += reply.ids
            ids += self.tail


def describe(workload: Workload, conversations: int = 2000) -> dict[str, float]:
    lengths = sorted(
        turn.prompt_tokens for k in range(conversations) for turn in workload.conversation(k)
    )
    n = len(lengths)
    return {
        "requests": n,
        "mean": sum(lengths) / n,
        "p10": lengths[n // 10],
        "p50": lengths[n // 2],
        "p90": lengths[n * 9 // 10],
        "min": lengths[0],
        "max": lengths[-1],
        "turns_per_conversation": n / conversations,
    }


if __name__ == "__main__":
    import json
    import sys
    import time

    started = time.perf_counter()
    w = Workload(sys.argv[1] if len(sys.argv) > 1 else "models/qwen3/tokenizer.json")
    built = time.perf_counter() - started
    print(json.dumps({"build_s": round(built, 3), **describe(w)}))
