"""Hugging Face compatible chat templates, rendered with a sandboxed Jinja environment.

The helpers mirror what transformers exposes to templates (``raise_exception``, ``strftime_now``,
a ``tojson`` that keeps non-ASCII text as is), so a model's own template renders here exactly as
``apply_chat_template`` renders it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herdsman.tokenizer.content_format import ContentFormat, detect_content_format


class ChatTemplateError(ValueError):
    """The template refused the conversation (``raise_exception``) or failed to render it."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers overrides Jinja's tojson: no HTML escaping, unicode kept, options passed on.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


# What getattr finds on a dict: its class's attributes (a dict instance has no others).
_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Sandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox (Jinja's immutable one), answering its per-access checks faster with
    the same answers. Rendering a chat is mostly ``message.role``/``message.content`` on dicts:
    Jinja tries the attribute, catches the AttributeError, then indexes; a name that is no
    attribute of dict is indexed at once here. Whether an attribute is safe depends only on the
    object's type and the name (``is_internal_attribute``, ``modifies_known_mutable``), so it is
    decided once per pair."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._safe: dict[tuple[type, str], bool] = {}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        safe = self._safe.get(key)
        if safe is None:
            safe = self._safe[key] = super().is_safe_attribute(obj, attr, value)
        return safe


def _make_environment(now: Callable[[], datetime]) -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: now().strftime(fmt)
    return env


class ChatTemplate:
    """A chat template compiled once and rendered per request.

    ``now`` is the clock behind ``strftime_now`` (templates that print today's date); tests pass a
    frozen one.
    """

    def __init__(
        self,
        source: str,
        special_tokens: Mapping[str, Any],
        *,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.source = source
        self._special_tokens = dict(special_tokens)
        env = _make_environment(now)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"chat template does not compile: {exc}") from exc
        # Whether messages' content is given as a string or as a list of parts (see
        # content_format.py), and whether the template knows a "developer" role (vLLM's test:
        # the word appears quoted in it); both decide the conversation the template is given.
        self.content_format: ContentFormat = detect_content_format(env, source)
        self.supports_developer = '"developer"' in source or "'developer'" in source

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        variables: dict[str, Any] = dict(self._special_tokens)
        if extra:
            variables.update(extra)
        final = ""
        if continue_final_message:
            messages, final = _tag_final_message(messages)
        variables["messages"] = messages
        variables["tools"] = tools
        variables["documents"] = None
        variables["add_generation_prompt"] = add_generation_prompt
        try:
            text = self._template.render(variables)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
            raise ChatTemplateError(f"chat template failed on these messages: {exc}") from exc
        if continue_final_message:
            text = _cut_at_tag(text, final)
        return text


# transformers marks the final message with this tag, renders, and cuts the prompt at the tag,
# so that whatever the template writes after the last message (end-of-turn tokens) goes away.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _tag_final_message(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], str]:
    if not messages:
        raise ChatTemplateError("continue_final_message needs a final message")
    final = dict(messages[-1])
    content = final.get("content")
    if isinstance(content, list):
        parts = [dict(p) if isinstance(p, Mapping) else p for p in content]
        for part in reversed(parts):
            if isinstance(part, dict) and "text" in part:
                text = part["text"]
                part["text"] = text + _CONTINUE_TAG
                break
        else:
            raise ChatTemplateError("continue_final_message: the final message has no text")
        final["content"] = parts
    elif isinstance(content, str):
        text = content
        final["content"] = content + _CONTINUE_TAG
    else:
        raise ChatTemplateError("continue_final_message: the final message has no text")
    return [*messages[:-1], final], text


def _cut_at_tag(rendered: str, final: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in rendered or tag not in rendered:
        raise ChatTemplateError(
            "continue_final_message: the template does not keep the final message intact"
        )
    at = rendered.rindex(tag)
    if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    return rendered[:at].rstrip()  # the template trimmed the tag's trailing space
