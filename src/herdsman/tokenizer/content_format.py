"""Does a chat template read message content as a string or as a list of parts?

Templates written for multimodal models loop over ``message.content`` (``{% for part in
message['content'] %}``); the rest print it as a string. vLLM's server decides which shape to
give a template by looking for such a loop in its syntax tree, and hands "openai" templates the
parts even for text (``[{"type": "text", "text": ...}]``), so a herdsman prompt equals vLLM's
only when it decides the same way. The rules here are vLLM's (``_detect_content_format``):

- a message variable is the target of a loop over ``messages`` or over a variable assigned from
  it (``{% set loop_messages = messages[1:] %}``);
- the template is "openai" when some loop iterates ``<message>.content`` or
  ``<message>['content']`` (through filters, tests and slices), or, inside a macro, a parameter
  that a call passes such content to, or, outside macros, a variable named ``content``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import jinja2
from jinja2 import nodes

ContentFormat = Literal["string", "openai"]


def detect_content_format(env: jinja2.Environment, source: str) -> ContentFormat:
    try:
        tree = env.parse(source)
        found = any(True for _ in _content_loops(tree))
    except (jinja2.TemplateError, AssertionError, AttributeError):
        return "string"  # vLLM's default when the tree cannot be read
    return "openai" if found else "string"


def _unwrap(node: nodes.Node) -> nodes.Node:
    """``x | f``, ``x is t`` and ``x[a:b]`` all stand for ``x`` here."""
    while True:
        wrapped = (
            (isinstance(node, nodes.Filter) and node.node is not None)
            or isinstance(node, nodes.Test)
            or (isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice))
        )
        if not wrapped:
            return node
        node = node.node  # type: ignore[attr-defined]


def _is_name(node: nodes.Node, name: str) -> bool:
    node = _unwrap(node)
    return isinstance(node, nodes.Name) and node.ctx == "load" and node.name == name


def _is_field(node: nodes.Node, name: str, key: str) -> bool:
    """``name.key`` or ``name['key']``."""
    node = _unwrap(node)
    if isinstance(node, nodes.Getattr):
        return _is_name(node.node, name) and node.attr == key
    if isinstance(node, nodes.Getitem):
        arg = node.arg
        return _is_name(node.node, name) and isinstance(arg, nodes.Const) and arg.value == key
    return False


def _aliases(tree: nodes.Template, name: str) -> list[str]:
    """``name`` and every variable assigned from it (or from such a variable)."""
    names, queue = [name], [name]
    while queue:
        current = queue.pop(0)
        for assign in tree.find_all(nodes.Assign):
            target = assign.target
            if (
                _is_name(assign.node, current)
                and isinstance(target, nodes.Name)
                and target.name not in names
            ):
                names.append(target.name)
                queue.append(target.name)
    return names


def _message_variables(tree: nodes.Template) -> list[str]:
    lists = _aliases(tree, "messages")
    found = []
    for loop in tree.find_all(nodes.For):
        if isinstance(loop.target, nodes.Name) and any(_is_name(loop.iter, n) for n in lists):
            found.append(loop.target.name)
    return found


def _content_loops(tree: nodes.Template) -> Iterator[nodes.For]:
    messages = _message_variables(tree)

    def is_content(node: nodes.Node) -> bool:
        return any(_is_field(node, m, "content") for m in messages)

    in_macros: set[int] = set()
    macro_params: dict[int, set[str]] = {}
    for macro in tree.find_all(nodes.Macro):
        params = [arg.name for arg in macro.args]
        given: set[str] = set()
        for call in tree.find_all(nodes.Call):
            if not (isinstance(call.node, nodes.Name) and call.node.name == macro.name):
                continue
            given.update(p for p, a in zip(params, call.args, strict=False) if is_content(a))
            given.update(k.key for k in call.kwargs if k.key in params and is_content(k.value))
        for loop in macro.find_all(nodes.For):
            in_macros.add(id(loop))
            if given:
                macro_params[id(loop)] = given
    for loop in tree.find_all(nodes.For):
        iterated = loop.iter
        named = isinstance(iterated, nodes.Name) and (
            iterated.name in macro_params.get(id(loop), ())
            or (id(loop) not in in_macros and iterated.name == "content")
        )
        if named or is_content(iterated):
            yield loop
