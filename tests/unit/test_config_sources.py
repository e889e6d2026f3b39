"""One configuration: serve options from a file, HERDSMAN_* variables and flags, in that order."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.conftest import QWEN3, Proc, wait_for_line

from herdsman import settings
from herdsman.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HERDSMAN_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.startswith("HERDSMAN_"):
            monkeypatch.delenv(name)


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """`herdsman config show --format json --sources ARGV`: key -> {value, source}."""
    assert main(["config", "show", "--format", "json", "--sources", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


# (file key, file value, env variable, env value, flags, value from file, env, flags)
PRECEDENCE = [
    pytest.param(
        "max_retries", 5, "HERDSMAN_MAX_RETRIES", "6", ["--max-retries", "7"], 5, 6, 7, id="int"
    ),
    pytest.param(
        "retry-max-backoff",
        1.5,
        "HERDSMAN_RETRY_MAX_BACKOFF",
        "2.5",
        ["--retry-max-backoff", "3.5"],
        1.5,
        2.5,
        3.5,
        id="float",
    ),
    pytest.param(
        "access-log",
        True,
        "HERDSMAN_ACCESS_LOG",
        "no",
        ["--access-log"],
        True,
        False,
        True,
        id="bool",
    ),
    pytest.param(
        "backend",
        "vllm",
        "HERDSMAN_BACKEND",
        "sglang",
        ["--backend", "auto"],
        "vllm",
        "sglang",
        "auto",
        id="choice",
    ),
    pytest.param(
        "image-url-domain",
        ["a.example", ".b.example"],
        "HERDSMAN_IMAGE_URL_DOMAIN",
        "c.example,d.example",
        ["--image-url-domain", "e.example"],
        ["a.example", ".b.example"],
        ["c.example", "d.example"],
        ["e.example"],
        id="list",
    ),
    pytest.param(
        "worker",
        ["grpc://a:1", "grpc://b:2"],
        "HERDSMAN_WORKER",
        '["grpc://c:3"]',
        ["--worker", "grpc://d:4", "--worker", "grpc://e:5"],
        ["grpc://a:1", "grpc://b:2"],
        ["grpc://c:3"],
        ["grpc://d:4", "grpc://e:5"],
        id="workers",
    ),
    pytest.param(
        "prefill",
        [["grpc://p:1", 8998], "grpc://q:2"],
        "HERDSMAN_PREFILL",
        "grpc://r:3 7000,grpc://s:4",
        ["--prefill", "grpc://t:5", "9000"],
        [["grpc://p:1", "8998"], ["grpc://q:2"]],
        [["grpc://r:3", "7000"], ["grpc://s:4"]],
        [["grpc://t:5", "9000"]],
        id="prefill-url-port",
    ),
]


@pytest.mark.parametrize(
    ("key", "in_file", "env", "in_env", "flags", "from_file", "from_env", "from_flags"),
    PRECEDENCE,
)
def test_file_then_env_then_flags(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
    in_file: Any,
    env: str,
    in_env: str,
    flags: list[str],
    from_file: Any,
    from_env: Any,
    from_flags: Any,
) -> None:
    name = key.replace("_", "-")
    path = tmp_path / "herdsman.yaml"
    path.write_text(yaml.safe_dump({key: in_file}))
    default = show(capsys)[name]
    assert default["source"] == "default"
    assert default["value"] != from_file

    assert show(capsys, "--config", str(path))[name] == {
        "value": from_file,
        "source": f"file {path}",
    }
    monkeypatch.setenv(env, in_env)
    assert show(capsys, "--config", str(path))[name] == {"value": from_env, "source": f"env {env}"}
    assert show(capsys, "--config", str(path), *flags)[name] == {
        "value": from_flags,
        "source": "cli",
    }


def test_json_file_and_config_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "herdsman.json"
    data = {"port": 9100, "tokenizer_cache": "off", "workers": 3, "access-log": "true"}
    path.write_text(json.dumps(data))
    monkeypatch.setenv("HERDSMAN_CONFIG", str(path))  # the file named by the environment
    shown = show(capsys)
    assert shown["port"]["value"] == 9100
    assert shown["tokenizer-cache"]["value"] == "off"
    assert shown["workers"] == {"value": 3, "source": f"file {path}"}  # --workers N: processes
    assert shown["access-log"]["value"] is True


def test_yaml_off_is_the_choice_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """YAML 1.1 reads unquoted `off` as false: for an on/off choice it means "off"."""
    path = tmp_path / "herdsman.yaml"
    path.write_text("tokenizer-cache: off\n")
    assert show(capsys, "--config", str(path))["tokenizer-cache"]["value"] == "off"


def test_show_output_is_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config show` prints a file that --config takes back (YAML: with its source comments)."""
    flags = ["--worker", "grpc://a:1", "--prefill", "grpc://p:1", "8998", "--disable-retries"]
    for fmt, extra in (("yaml", ["--sources"]), ("json", [])):
        monkeypatch.setenv("HERDSMAN_QUEUE_SIZE", "42")
        assert main(["config", "show", "--format", fmt, *extra, *flags]) == 0
        path = tmp_path / f"shown.{fmt}"
        path.write_text(capsys.readouterr().out)
        monkeypatch.delenv("HERDSMAN_QUEUE_SIZE")
        shown = show(capsys, "--config", str(path))
        assert shown["queue-size"] == {"value": 42, "source": f"file {path}"}
        assert shown["worker"]["value"] == ["grpc://a:1"]
        assert shown["prefill"]["value"] == [["grpc://p:1", "8998"]]
        assert shown["disable-retries"]["value"] is True


def test_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "herdsman.yaml"
    path.write_text("max_retrys: 3\n")
    for command in (["serve"], ["config", "show"]):
        err = fails(capsys, *command, "--config", str(path))
        assert err == (
            f"herdsman: config file {path}: unknown key 'max_retrys' "
            "(did you mean 'max-retries'?)\n"
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: abc\n", "port: expected an integer, got 'abc'"),
        ("retry-jitter: [1]\n", "retry-jitter: expected a number, got [1]"),
        ("backend: tgi\n", "backend: expected one of auto, vllm, sglang, got 'tgi'"),
        ("policy: nearest\n", "policy: expected one of cache_aware, "),
        ("access_log: 2\n", "access_log: expected true or false, got 2"),
        ("worker: {a: 1}\n", "worker: expected a string, got {'a': 1}"),
        ("port: 1\nport: 2\n", "key 'port' given twice"),
        ("max-retries: 1\nretry_max_retries: 2\n", "set the same option"),
        ("- port\n", "expected a mapping of settings, got list"),
        ("port: [\n", "not valid YAML"),
    ],
)
def test_bad_file_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "herdsman.yaml"
    path.write_text(text)
    err = fails(capsys, "serve", "--config", str(path))
    assert err.startswith(f"herdsman: config file {path}: "), err
    assert message in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, "serve", "--config", str(tmp_path / "nope.yaml"))
    assert "nope.yaml: cannot read it" in err


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HERDSMAN_PORT", "80x", "environment HERDSMAN_PORT: expected an integer, got '80x'"),
        ("HERDSMAN_ACCESS_LOG", "maybe", "HERDSMAN_ACCESS_LOG: expected 1/0/true/false/yes/no"),
        ("HERDSMAN_GRPC_TRANSPORT", "h3", "HERDSMAN_GRPC_TRANSPORT: expected one of native"),
        ("HERDSMAN_WORKER", "[oops", "HERDSMAN_WORKER: not a JSON list"),
    ],
)
def test_bad_env_value(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(name, value)
    err = fails(capsys, "serve")
    assert err.startswith("herdsman: environment ")
    assert message in err


def test_unknown_env_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERDSMAN_MAX_RETRYS", "1")
    monkeypatch.setenv("HERDSMAN_VLLM_PYTHON", "/x/python")  # the test tooling's: no warning
    assert main(["config", "show"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "herdsman: warning: environment variable HERDSMAN_MAX_RETRYS is not a setting "
        "(did you mean 'HERDSMAN_MAX_RETRIES'?); ignored\n"
    )


def test_secrets_are_not_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "herdsman.yaml"
    path.write_text("storage: postgresql://alice:hunter2@db.internal/herdsman?password=pw2\n")
    monkeypatch.setenv("HERDSMAN_ENGINE_KEY", "/etc/herdsman/hunter2.pem")
    argv = ["--config", str(path), "--mcp-config", "redis://:hunter2@cache:6379/0"]
    for fmt in ("yaml", "json"):
        assert main(["config", "show", "--format", fmt, "--sources", *argv]) == 0
        out = capsys.readouterr().out
        assert "hunter2" not in out and "alice" not in out and "pw2" not in out
    shown = show(capsys, *argv)
    assert shown["storage"]["value"] == "postgresql://***@db.internal/herdsman?password=***"
    assert shown["engine-key"] == {"value": "***", "source": "env HERDSMAN_ENGINE_KEY"}
    assert shown["mcp-config"]["value"] == "redis://***@cache:6379/0"
    assert shown["prefix-hash-tokens"]["value"] == 256  # a count of tokens is no secret


def test_secret_options_of_any_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """An option added later (an --api-key) is redacted by its name, with no list to update."""
    parser = argparse.ArgumentParser(prog="herdsman")
    sub = parser.add_subparsers(dest="command", required=True)

    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api-key", dest="api_keys", action="append", default=[])
        p.add_argument("--admin-token")
        p.add_argument("--tokenizer-path")
        p.add_argument("--rate", type=float, default=1.0)

    settings.add_show_command(sub, arguments)
    environ = {"HERDSMAN_API_KEY": "sk-1,sk-2", "HERDSMAN_ADMIN_TOKEN": "t0p"}
    argv = ["config", "show", "--tokenizer-path", "/models/t", "--rate", "2"]
    args = settings.parse_args(parser, argv, environ)
    assert args.api_keys == ["sk-1", "sk-2"]  # the real values reach the gateway...
    assert settings.effective(args) == {  # ...and are never printed
        "api-key": ["***", "***"],
        "admin-token": "***",
        "tokenizer-path": "/models/t",
        "rate": 2.0,
    }
    assert "sk-1" not in settings.render(args, "yaml", sources=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_from_file_and_env(tmp_path: Path) -> None:
    """A real gateway whose port, workers and process count come from the file and env."""
    port = _free_port()
    pending = "grpc://127.0.0.1:1"  # never answers: listed as pending, from the file's list
    config = tmp_path / "herdsman.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": port,
                "workers": 2,  # the environment says 1
                "worker": [pending],
                "engine-sim": True,
                "model-path": str(QWEN3),
                "no-warm-spare": True,
                "log-level": "debug",  # the command line says warning
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDSMAN_")}
    env.update(PYTHONUNBUFFERED="1", HERDSMAN_WORKERS="1")
    argv = [sys.executable, "-m", "herdsman", "serve", "--config", str(config)]
    process = subprocess.Popen([*argv, "--log-level", "warning"], stdout=subprocess.PIPE, env=env)
    proc = Proc(process, "")
    try:
        ready = rb"herdsman listening on http://(\S+):(\d+) model=\S+ processes=(\d+)"
        match = wait_for_line(process, re.compile(ready), 90)
        assert match.group(1, 2) == (b"127.0.0.1", str(port).encode())
        assert match.group(3) == b"1"
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/health", timeout=10).json()
        assert health["status"] == "ok"
        workers = httpx.get(f"{base}/workers", timeout=10).json()["workers"]
        assert [w["status"] for w in workers if w["url"] == pending] == ["pending"], workers
        assert len(workers) == 2  # the file's worker and the embedded engine-sim
    finally:
        proc.stop()
