"""The chat-template sandbox answers every access as Jinja's ImmutableSandboxedEnvironment
(transformers' sandbox) does, only faster (herdsman.tokenizer.chat_template._Sandbox)."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any

import pytest
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herdsman.tokenizer.chat_template import _make_environment


def _frozen_now() -> datetime:
    return datetime(2026, 1, 2, 3, 4, 5)  # no snippet reads the clock; a fixed one all the same


SNIPPETS = [
    "{{ message.role }}:{{ message.content }}",
    "{{ message.missing }}|{{ message.missing is defined }}",
    "{{ message['role'] }}{{ message.get('content') }}",
    "{{ message.items | list | length }}",  # the attribute wins over a key of that name
    "{{ message.keys() | list }}",
    "{{ message.update({'x': 1}) }}",
    "{{ message.pop('role') }}",
    "{{ message.__class__ }}",
    "{{ message.__class__.__mro__ }}",
    "{{ messages.append(1) }}",
    "{{ messages.__len__() }}",
    "{{ messages | length }}{{ messages[0].role }}",
    "{{ message.content.upper() }}{{ message.content.split(' ') }}",
    "{{ message.content.format(1) }}",
    "{{ message.content.__class__ }}",
    "{{ ordered.role }}{{ ordered.update }}",
    "{% for m in messages %}{{ m.role }}{% if not loop.last %},{% endif %}{% endfor %}",
    "{{ message.role.startswith('us') }}{{ message.role.endswith }}",
    "{{ namespace(x=1).x }}",
]


def _reference() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )


def _outcome(env: ImmutableSandboxedEnvironment, source: str, context: dict[str, Any]) -> str:
    try:
        return "ok: " + env.from_string(source).render(**context)
    except Exception as exc:  # the kind of refusal is part of the answer
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("source", SNIPPETS)
def test_accesses_are_answered_as_jinjas_sandbox_answers_them(source: str) -> None:
    def context() -> dict[str, Any]:
        message = {"role": "user", "content": "hi there {0}", "items": "a key named items"}
        return {
            "message": message,
            "messages": [message, {"role": "assistant", "content": "yo"}],
            "ordered": OrderedDict(role="system"),
        }

    ours = _outcome(_make_environment(_frozen_now), source, context())
    reference = _outcome(_reference(), source, context())
    assert ours == reference


def test_one_name_is_judged_per_type_and_stays_judged() -> None:
    env = _make_environment(_frozen_now)
    pop = env.from_string("{{ x.pop(0) }}")
    for _ in range(2):  # the second round answers from the cache
        with pytest.raises(Exception, match="access to attribute 'pop'"):
            pop.render(x=[1, 2])
        assert pop.render(x=Stack()) == "popped 0"  # another type: its own answer


class Stack:
    def pop(self, index: int) -> str:
        return f"popped {index}"
