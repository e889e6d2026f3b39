"""API keys: where they come from, how a request presents one, and how it is recognised.

Keys come from ``--api-key`` (repeatable; named ``key-1``, ``key-2``, ...) and
``--api-keys-file``: one ``name:key`` per line (blank lines and ``#`` comments skipped), or a
JSON/YAML mapping ``name -> {key, requests_per_minute, tokens_per_minute, max_concurrent}``
(or ``name -> key``). A request presents a key as OpenAI's ``Authorization: Bearer KEY`` or
Anthropic's ``x-api-key: KEY``. Keys are compared by their SHA-256 digests with
``hmac.compare_digest`` against every configured key, so the time taken does not depend on
which key matched or how much of it did. Key values are never logged: only names are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class KeyFileError(ValueError):
    """A keys file that cannot be used (the gateway refuses to start)."""


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key limits; 0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_concurrent: int = 0

    @property
    def limited(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_concurrent)


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes  # sha256 of the key; the key itself is not kept
    limits: KeyLimits


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class KeyRing:
    """The configured client keys, looked up in constant time."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, presented: str | None) -> ApiKey | None:
        if presented is None:
            return None
        wanted = digest(presented)
        found: ApiKey | None = None
        for key in self.keys:  # every key compared, never an early exit
            if hmac.compare_digest(wanted, key.digest):
                found = key
        return found


def matches(presented: str | None, secret: str | None) -> bool:
    """One secret (the admin or metrics key) against the presented key, in constant time."""
    if presented is None or not secret:
        return False
    return hmac.compare_digest(digest(presented), digest(secret))


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


_LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")


def _limit(name: str, entry: dict[str, Any], field: str, default: int) -> int:
    value = entry.get(field, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeyFileError(f"key {name!r}: {field} must be a whole number >= 0")
    return value


def _from_mapping(data: object, defaults: KeyLimits) -> list[tuple[str, str, KeyLimits]]:
    if not isinstance(data, dict):
        raise KeyFileError("a JSON/YAML keys file must be a mapping of name -> key settings")
    out = []
    for name, entry in data.items():
        if isinstance(entry, str):
            entry = {"key": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise KeyFileError(f"key {name!r}: needs a 'key' string")
        unknown = set(entry) - {"key", *_LIMIT_FIELDS}
        if unknown:
            raise KeyFileError(f"key {name!r}: unknown settings {sorted(unknown)}")
        limits = KeyLimits(
            *(_limit(str(name), entry, f, getattr(defaults, f)) for f in _LIMIT_FIELDS)
        )
        out.append((str(name), entry["key"], limits))
    return out


def _from_lines(text: str, defaults: KeyLimits) -> list[tuple[str, str, KeyLimits]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep or not name.strip() or not secret.strip():
            raise KeyFileError(f"line {number}: expected name:key")
        out.append((name.strip(), secret.strip(), defaults))
    return out


def read_key_file(path: str, defaults: KeyLimits) -> list[tuple[str, str, KeyLimits]]:
    """(name, key, limits) of every key in the file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return _from_mapping(yaml.safe_load(text) or {}, defaults)
        except yaml.YAMLError as exc:
            raise KeyFileError(f"{path} is not valid YAML: {exc}") from None
    if suffix == ".json" or text.lstrip().startswith("{"):
        try:
            return _from_mapping(json.loads(text), defaults)
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{path} is not valid JSON: {exc}") from None
    return _from_lines(text, defaults)


def load_keys(cli_keys: list[str], path: str | None, defaults: KeyLimits) -> KeyRing:
    """Every client key: ``--api-key`` values (default limits) and the keys file's."""
    entries = [(f"key-{i}", secret, defaults) for i, secret in enumerate(cli_keys, 1)]
    if path:
        entries += read_key_file(path, defaults)
    names: set[str] = set()
    digests: set[bytes] = set()
    keys = []
    for name, secret, limits in entries:
        if not secret:
            raise KeyFileError(f"key {name!r} is empty")
        if name in names:
            raise KeyFileError(f"key name {name!r} is given twice")
        hashed = digest(secret)
        if hashed in digests:
            raise KeyFileError(f"key {name!r} has the same key as another one")
        names.add(name)
        digests.add(hashed)
        keys.append(ApiKey(name, hashed, replace(limits)))
    return KeyRing(keys)


def checked_keys_file(path: str | None) -> str | None:
    """--api-keys-file read and checked by the CLI, so a bad file stops the gateway at once."""
    if path is not None:
        try:
            read_key_file(path, KeyLimits())
        except KeyFileError as exc:
            raise SystemExit(f"--api-keys-file: {exc}") from None
    return path
