"""One configuration: every ``herdsman serve`` option from a file, the environment or the CLI.

Nothing here knows the options themselves: it walks the parser's actions, so an option added
to ``serve.options.add_serve_arguments`` later is settable everywhere without more code. For
each option, named by its long flag (``--max-retries``; its aliases too):

- file key ``max-retries`` (or ``max_retries``), in ``--config FILE`` (YAML, or JSON for .json);
- environment ``HERDSMAN_MAX_RETRIES``.

Precedence: built-in defaults < config file < environment < command line. File and environment
values are converted and checked here (the option's ``type`` and ``choices``) with errors that
name the key, then become the parser's defaults, so that argparse itself applies the command
line over them.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import yaml

ENV_PREFIX = "HERDSMAN_"
# Names the config file itself, for deployments that can only set the environment.
CONFIG_ENV = "HERDSMAN_CONFIG"
# What the supervisor tells the gateway's fork server to preload (herdsman.serve.preload).
PRELOAD_ENV = "HERDSMAN_PRELOAD"
# HERDSMAN_* variables that are not settings (the gateway's own and the test tooling's): never
# warned about.
NOT_SETTINGS_ENV = frozenset(
    {
        CONFIG_ENV,
        PRELOAD_ENV,
        "HERDSMAN_SKIP_VLLM",
        "HERDSMAN_VLLM_PYTHON",
        "HERDSMAN_VLLM_START_TIMEOUT",
        "HERDSMAN_FUZZ_EXAMPLES",
        "HERDSMAN_DIFFERENTIAL_URLS",
        "HERDSMAN_TEMPLATE_DIFF_DUMP",
    }
)
REDACTED = "***"
# Words of an option's dest that make its (string) value a secret: `api_key`, `admin_tokens`.
_SECRET_WORDS = frozenset(
    {"key", "keys", "secret", "secrets", "password", "passwords", "passwd", "token", "tokens"}
)
# The user:password part of a URL (postgresql://u:p@h/db, redis://:p@h).
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
# Query parameters of a URL that hold credentials (?password=..., ?token=...).
_URL_SECRET_PARAM = re.compile(
    r"(?P<name>[?&][A-Za-z_]*(?:key|secret|password|passwd|token)[A-Za-z_]*=)(?P<value>[^&#\s]*)",
    re.IGNORECASE,
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Marks the actions of a parser that are not settings (--config itself, config show's own).
_NOT_A_SETTING = "_herdsman_not_a_setting"
_PARSER_KEY = "_herdsman_settings_parser"


class SettingsError(Exception):
    """A bad file or environment value; the message names where it came from and the key."""


@dataclass(slots=True)
class Setting:
    """One option as the file and the environment name it."""

    action: argparse.Action
    key: str  # the canonical file key: the first long flag without its dashes
    keys: tuple[str, ...]  # every accepted key, dashes (underscores are normalized away)
    envs: tuple[str, ...]  # HERDSMAN_ + each key, upper-cased, dashes as underscores

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def secret(self) -> bool:
        return bool(_SECRET_WORDS & set(self.dest.lower().split("_")))


@dataclass(slots=True)
class Resolved:
    """Where each setting's value came from: ``default``, ``file PATH``, ``env NAME``, ``cli``."""

    settings: list[Setting]
    sources: dict[str, str] = field(default_factory=dict)
    config_file: str | None = None


def _normalize(key: str) -> str:
    return key.strip().lstrip("-").replace("_", "-").lower()


def settings_of(parser: argparse.ArgumentParser) -> list[Setting]:
    """The parser's options that are settings: every optional one with a dest of its own."""
    found: list[Setting] = []
    for action in parser._actions:
        if (
            not action.option_strings
            or action.dest in (argparse.SUPPRESS, None)
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
            or getattr(action, _NOT_A_SETTING, False)
        ):
            continue
        longs = [s for s in action.option_strings if s.startswith("--")] or action.option_strings
        keys = tuple(dict.fromkeys(_normalize(s) for s in longs))
        envs = tuple(ENV_PREFIX + k.upper().replace("-", "_") for k in keys)
        found.append(Setting(action, keys[0], keys, envs))
    return found


# -- converting one value -------------------------------------------------------------------


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(str(c) for c in action.choices)
    kind = action.type
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is None or kind is str:
        return "a string"
    return getattr(kind, "__name__", "a value").replace("_", " ")


def _scalar(action: argparse.Action, value: Any) -> Any:
    """One value converted as argparse converts a command-line string, and checked."""
    if isinstance(value, bool):
        # YAML 1.1 reads unquoted on/off/yes/no as booleans: fine where the choices say on/off.
        choices = [str(c) for c in action.choices or ()]
        if "on" in choices and "off" in choices:
            value = "on" if value else "off"
        else:
            raise SettingsError(f"expected {_expected(action)}, got {value!r} (quote it?)")
    if isinstance(value, list | dict) or value is None:
        raise SettingsError(f"expected {_expected(action)}, got {value!r}")
    text = str(value)
    convert = action.type or str
    try:
        converted = convert(text)  # type: ignore[operator]
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        detail = f" ({exc})" if isinstance(exc, argparse.ArgumentTypeError) else ""
        raise SettingsError(f"expected {_expected(action)}, got {text!r}{detail}") from None
    if action.choices is not None and converted not in action.choices:
        raise SettingsError(f"expected {_expected(action)}, got {text!r}")
    return converted


def _occurrence(action: argparse.Action, value: Any) -> Any:
    """What argparse hands the action for one use of the flag, from a file/env value."""
    nargs = action.nargs
    if nargs is None or nargs == argparse.OPTIONAL:
        return _scalar(action, value)
    # nargs "+", "*" or N: a list, or one string of space-separated words ("URL PORT").
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list):
        items = [items]
    if nargs == argparse.ONE_OR_MORE and not items:
        raise SettingsError("expected at least one value")
    if isinstance(nargs, int) and len(items) != nargs:
        raise SettingsError(f"expected {nargs} values, got {len(items)}")
    return [_scalar(action, item) for item in items]


def _is_repeatable(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction | argparse._ExtendAction)


def _flag_value(value: Any, *, from_env: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE  # also a file's "true" (JSON written by hand)
    accepted = "1/0/true/false/yes/no" if from_env else "true or false"
    raise SettingsError(f"expected {accepted}, got {value!r}")


def _env_list(text: str) -> Any:
    """An environment list: a JSON list, or comma-separated items."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"not a JSON list: {exc}") from None
    return [item.strip() for item in text.split(",") if item.strip()]


def convert(
    parser: argparse.ArgumentParser, setting: Setting, value: Any, *, from_env: bool
) -> Any:
    """The value the option's dest gets from a file or environment value.

    The option's own action computes it, as the command line would, so repeatable and
    multi-value options (``--prefill URL [PORT]``) end up shaped exactly as from flags.
    """
    action = setting.action
    namespace = argparse.Namespace()
    if action.nargs == 0:  # a flag: store_true/store_false/store_const/BooleanOptionalAction
        given = _flag_value(value, from_env=from_env)
        setattr(namespace, action.dest, action.default)
        if isinstance(action, argparse.BooleanOptionalAction):
            strings = action.option_strings
            option = strings[0] if given else next(s for s in strings if s.startswith("--no-"))
            action(parser, namespace, [], option)
        elif given:
            action(parser, namespace, [], action.option_strings[0])
        return getattr(namespace, action.dest)
    if _is_repeatable(action):
        if from_env and isinstance(value, str):
            value = _env_list(value)
        items = value if isinstance(value, list) else [value]
        setattr(namespace, action.dest, None)  # the file's list replaces the default's
        for item in items:
            action(parser, namespace, _occurrence(action, item), action.option_strings[0])
        return getattr(namespace, action.dest) or []
    if from_env and isinstance(value, str) and action.nargs not in (None, argparse.OPTIONAL):
        value = _env_list(value)
    setattr(namespace, action.dest, action.default)
    action(parser, namespace, _occurrence(action, value), action.option_strings[0])
    return getattr(namespace, action.dest)


# -- reading the sources --------------------------------------------------------------------


@functools.cache
def _unique_key_loader() -> type[yaml.SafeLoader]:
    """safe_load that refuses a key given twice (PyYAML would silently keep the last).

    Made, and PyYAML imported, when a YAML file is read: ``herdsman serve`` without a config
    file (its supervisor must stay small) does without it.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_file(path: str) -> dict[str, Any]:
    """The mapping a config file holds (JSON for .json, else YAML)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise SettingsError(f"cannot read it: {exc.strerror or exc}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise SettingsError(f"not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise SettingsError(f"not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"expected a mapping of settings, got {type(data).__name__}")
    return data


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _by_key(settings: list[Setting]) -> dict[str, Setting]:
    return {key: s for s in settings for key in s.keys}


def file_values(
    parser: argparse.ArgumentParser, settings: list[Setting], data: Mapping[str, Any]
) -> dict[str, tuple[Any, str]]:
    """dest -> (value, key) from a config file's mapping; a key that is no setting is an error."""
    by_key = _by_key(settings)
    canonical = [s.key for s in settings]
    values: dict[str, tuple[Any, str]] = {}
    for raw_key, value in data.items():
        setting = by_key.get(_normalize(str(raw_key)))
        if setting is None:
            suggestion = _suggest(_normalize(str(raw_key)), canonical)
            raise SettingsError(f"unknown key {str(raw_key)!r}{suggestion}")
        if setting.dest in values:
            other = values[setting.dest][1]
            raise SettingsError(f"{raw_key!r} and {other!r} set the same option")
        if value is None:  # null: the built-in default (what `config show` prints for unset)
            continue
        try:
            values[setting.dest] = (convert(parser, setting, value, from_env=False), str(raw_key))
        except SettingsError as exc:
            raise SettingsError(f"{raw_key}: {exc}") from None
    return values


def env_values(
    parser: argparse.ArgumentParser,
    settings: list[Setting],
    environ: Mapping[str, str],
    warn: Callable[[str], None],
) -> dict[str, tuple[Any, str]]:
    """dest -> (value, variable) from HERDSMAN_* variables; unknown ones are only warned of
    (other tools' variables may share the prefix)."""
    by_env = {env: s for s in settings for env in s.envs}
    values: dict[str, tuple[Any, str]] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS_ENV:
            continue
        setting = by_env.get(name)
        if setting is None:
            suggestion = _suggest(name, [s.envs[0] for s in settings])
            warn(f"environment variable {name} is not a setting{suggestion}; ignored")
            continue
        if setting.dest in values:
            raise SettingsError(f"{values[setting.dest][1]} and {name} set the same option")
        try:
            values[setting.dest] = (convert(parser, setting, environ[name], from_env=True), name)
        except SettingsError as exc:
            raise SettingsError(f"environment {name}: {exc}") from None
    return values


# -- wiring into argparse -------------------------------------------------------------------


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` on a parser whose options become settable; registers the parser."""
    action = parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"settings file (YAML, or JSON for .json; default: ${CONFIG_ENV}): every option "
        f"as a key ('max-retries: 5'); also settable as {ENV_PREFIX}<OPTION> "
        f"({ENV_PREFIX}MAX_RETRIES=5). Precedence: defaults < file < environment < flags",
    )
    setattr(action, _NOT_A_SETTING, True)
    parser.set_defaults(**{_PARSER_KEY: parser})


def _fail(message: str) -> NoReturn:
    print(f"herdsman: {message}", file=sys.stderr)
    raise SystemExit(2)


def _warn(message: str) -> None:
    print(f"herdsman: warning: {message}", file=sys.stderr)


def parse_args(
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with the file and the environment under the command line.

    Parses twice: first with every setting's default suppressed, which tells what the command
    line gives (and the subcommand, and --config); then with file and environment values as
    the defaults of the options the command line left alone (so a repeatable flag on the
    command line replaces the file's list instead of adding to it).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    if "-h" in argv or "--help" in argv:
        # Help exits from the first parse: show it with the real defaults, not suppressed ones.
        return parser.parse_args(argv)
    subparsers = _settings_parsers(parser)
    saved = {id(a): a.default for p in subparsers for a in p._actions}
    try:
        for p in subparsers:
            for setting in settings_of(p):
                setting.action.default = argparse.SUPPRESS
        first = parser.parse_args(argv)
    finally:
        for p in subparsers:
            for a in p._actions:
                a.default = saved[id(a)]
    target: argparse.ArgumentParser | None = getattr(first, _PARSER_KEY, None)
    if target is None:
        return first
    settings = settings_of(target)
    given = {s.dest for s in settings if hasattr(first, s.dest)}
    path = getattr(first, "config", None) or environ.get(CONFIG_ENV) or None
    resolved = Resolved(settings, config_file=path)
    layered: dict[str, Any] = {}
    if path is not None:
        try:
            from_file = file_values(target, settings, load_file(path))
        except SettingsError as exc:
            _fail(f"config file {path}: {exc}")
        for dest, (value, _key) in from_file.items():
            layered[dest] = value
            resolved.sources[dest] = f"file {path}"
    try:
        from_env = env_values(target, settings, environ, _warn)
    except SettingsError as exc:
        _fail(str(exc))
    for dest, (value, name) in from_env.items():
        layered[dest] = value
        resolved.sources[dest] = f"env {name}"
    target.set_defaults(**{d: v for d, v in layered.items() if d not in given})
    args = parser.parse_args(argv)
    for s in settings:
        if s.dest in given:
            resolved.sources[s.dest] = "cli"
        resolved.sources.setdefault(s.dest, "default")
    delattr(args, _PARSER_KEY)
    args.config = path
    args.resolved_settings = resolved
    return args


def _settings_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub)parser that add_config_option registered, however deeply nested."""
    found: list[argparse.ArgumentParser] = []
    stack = [parser]
    while stack:
        p = stack.pop()
        if _PARSER_KEY in p._defaults:
            found.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(dict.fromkeys(action.choices.values()))
    return found


# -- herdsman config show -------------------------------------------------------------------


def redact_text(text: str) -> str:
    """A string with the credentials of the URLs in it replaced by ***."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    return _URL_SECRET_PARAM.sub(lambda m: f"{m['name']}{REDACTED}", text)


def _shown(value: Any, secret: bool) -> Any:
    """A value as `config show` prints it: plain data, secrets replaced."""
    if isinstance(value, list | tuple):
        return [_shown(v, secret) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value  # numbers and booleans are never secrets (`prefix_hash_tokens: 256`)
    if secret:
        return REDACTED
    return redact_text(str(value))


def effective(args: argparse.Namespace) -> dict[str, Any]:
    """The effective settings by file key, secrets redacted."""
    resolved: Resolved = args.resolved_settings
    return {s.key: _shown(getattr(args, s.dest, None), s.secret) for s in resolved.settings}


def render(args: argparse.Namespace, fmt: str, sources: bool) -> str:
    """The effective settings as a config file (`--config` takes it back) in ``fmt``."""
    resolved: Resolved = args.resolved_settings
    values = effective(args)
    if fmt == "json":
        if sources:
            by_key = {s.key: resolved.sources[s.dest] for s in resolved.settings}
            data: Any = {k: {"value": v, "source": by_key[k]} for k, v in values.items()}
        else:
            data = values
        return json.dumps(data, indent=2) + "\n"
    import yaml  # only here and for YAML files: see _unique_key_loader

    lines: list[str] = []
    if resolved.config_file:
        lines.append(f"# herdsman config show (file: {resolved.config_file})")
    for setting in resolved.settings:
        text = yaml.safe_dump(
            {setting.key: values[setting.key]},
            default_flow_style=True if isinstance(values[setting.key], list) else None,
            sort_keys=False,
            width=1 << 30,
        ).rstrip("\n")
        text = text.removeprefix("{").removesuffix("}") if text.startswith("{") else text
        if sources:  # a trailing comment keeps the output a valid config file
            text += f"  # {redact_text(resolved.sources[setting.dest])}"
        lines.append(text)
    return "\n".join(lines) + "\n"


def add_show_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_arguments: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``herdsman config show``: the serve options (flags, env, file) and how to print them."""
    config = sub.add_parser("config", help="the effective configuration")
    actions = config.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser(
        "show",
        help="print the effective serve configuration (takes serve's flags, env and --config)",
        description="Prints what `herdsman serve` with the same flags, environment and --config "
        "would run with, as a config file; secrets as ***.",
    )
    add_arguments(show)
    add_config_option(show)
    for action in (
        show.add_argument("--format", dest="show_format", choices=["yaml", "json"], default="yaml"),
        show.add_argument(
            "--sources",
            dest="show_sources",
            action="store_true",
            help="say where each value came from (default, file, env, cli)",
        ),
    ):
        setattr(action, _NOT_A_SETTING, True)
    show.set_defaults(run=_run_show)


def _run_show(args: argparse.Namespace) -> int:
    sys.stdout.write(render(args, args.show_format, args.show_sources))
    return 0
