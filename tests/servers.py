"""Real servers the tests start on loopback, each in a temp dir of its own, stopped when the block ends."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT = 60


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's server binaries: `initdb` on PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    installed = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(installed[-1]).parent if installed else None


@contextmanager
def postgres_server(root: Path, database: str = "podium") -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port> with `database`; yields its SQLAlchemy URL.

    Trust authentication, no fsync, unix sockets inside the cluster's own folder. The server refuses to
    run as root, so as root it runs as the `postgres` OS user (Debian's package creates it) in a folder
    of the system temp dir that user can reach (pytest's temp dirs are private to root); else in `root`.
    Skips the test when no `initdb` can be found.
    """
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin)")
    as_root = os.geteuid() == 0
    root.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="podium-pg-")) if as_root else root
    if as_root:
        shutil.chown(home, "postgres", "postgres")
    data, log, port = home / "data", home / "postgres.log", free_port()

    def run(*command: str | Path) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        done = subprocess.run([*prefix, *map(str, command)], cwd=home, capture_output=True, text=True)
        if done.returncode:
            server_log = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{Path(command[0]).name} failed:\n{done.stdout}{done.stderr}{server_log}")

    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{home}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", str(START_TIMEOUT), "start")
        try:
            run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database)
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
        finally:
            run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        if as_root:
            if log.exists():
                shutil.copyfile(log, root / "postgres.log")
            shutil.rmtree(home, ignore_errors=True)


START_TIMEOUT = 60.0


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextmanager
def mlflow_server(root: Path, timeout: float = START_TIMEOUT) -> Iterator[str]:
    """`mlflow server` on a free loopback port, SQLite backend, artifacts proxied to a folder; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # no telemetry, and no background job runner (it is for GenAI jobs the pipeline never submits)
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with http_service(command, f"{url}/health", root, env, timeout):
        yield url


@contextmanager
def http_service(
    command: list[str], probe: str, root: Path, env: dict[str, str] | None = None, timeout: float = START_TIMEOUT
) -> Iterator[None]:
    """Run `command` in its own session (log in root/server.log) until `probe` answers 200; stop it afterwards."""
    log, name = root / "server.log", " ".join(command[:4])
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"{name} exited with {server.returncode} on start:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {probe} within {timeout:.0f}s:\n{_tail(log)}")
            time.sleep(0.25)
        yield
    finally:
        # a server may exec workers as children (`mlflow server` runs uvicorn); the session holds them all
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
