"""Real servers the tests start on loopback, each in a temp dir of its own, stopped when the block ends."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

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
        run(
            bindir / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
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
    """`mlflow server` on a free loopback port, SQLite backend, artifacts proxied to a folder; its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # no telemetry, and no background job runner (it is for GenAI jobs the pipeline never submits)
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with http_service(command, f"{url}/health", root, env, timeout):
        yield url


@contextmanager
def app_server(root: Path, profile: Path, spec: Path, timeout: float = START_TIMEOUT) -> Iterator[str]:
    """`podium app` for these settings on a free loopback port (MLflow: the environment's store); its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipelines.cli", "app", "-p", str(profile), "--spec", str(spec)]
    with http_service([*command, "--port", str(port)], f"{url}/_stcore/health", root, timeout=timeout):
        yield url


@contextmanager
def http_service(
    command: list[str],
    probe: str,
    root: Path,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[None]:
    """Run `command` in its own session (log: root/server.log) until `probe` answers 200; stop it after."""
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


# --- headless Chromium ----------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--hide-scrollbars",
)
BROWSER_TIMEOUT = 120.0
WINDOW = (1800, 1000)


def chromium(
    url: str,
    screenshot: Path | None = None,
    window: tuple[int, int] = WINDOW,
    budget_ms: int = 8000,
    timeout: float = BROWSER_TIMEOUT,
) -> str:
    """The DOM of `url` once headless Chromium has run the page's JavaScript for `budget_ms` of virtual time.

    Each call starts a fresh browser with a profile of its own; `screenshot` also saves the viewport as a
    PNG. Virtual time stands still while a network fetch is pending, so a slow server delays the dump
    instead of cutting the page's AJAX calls short.
    """
    binary = shutil.which("chromium")
    if binary is None:
        raise RuntimeError("chromium is not on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="podium-chromium-", ignore_cleanup_errors=True) as profile:
        command = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            *([f"--screenshot={screenshot}"] if screenshot else []),
            url,
        ]
        browser = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            dom, errors = browser.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(browser.pid)
            browser.communicate()
            raise RuntimeError(f"chromium did not finish {url} within {timeout:.0f}s") from None
        kill_session(browser.pid)  # helpers (zygote, crashpad) that may outlive the browser
    if browser.returncode:
        raise RuntimeError(f"chromium exited with {browser.returncode} on {url}:\n{errors[-3000:]}")
    return dom


def kill_session(pid: int) -> None:
    """SIGKILL every process of the session `pid` leads (a browser and its helpers), if any is left."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def rendered(
    url: str,
    ready: Callable[[RenderedPage], bool],
    screenshot: Path | None = None,
    window: tuple[int, int] = WINDOW,
    deadline: float = 180.0,
) -> RenderedPage:
    """Render `url` with `chromium` until `ready(page)`, doubling the virtual-time budget each try.

    A browser that fails is tried again too. After `deadline` seconds the last page is returned either
    way, so the caller's assertion reports what the browser did show; `screenshot` is the last try's.
    """
    start, budget = time.monotonic(), 8000
    while True:
        try:
            page = RenderedPage(chromium(url, screenshot, window, budget))
        except RuntimeError:
            if time.monotonic() - start > deadline:
                raise
        else:
            if ready(page) or time.monotonic() - start > deadline:
                return page
        budget = min(2 * budget, 64_000)


class RenderedPage(HTMLParser):
    """What a rendered DOM shows: its text, its links (href, text) and the text of each table row.

    Rows are <tr> and role="row" elements. Scripts, styles and <noscript> are skipped; text nodes are
    joined by a space and whitespace, &nbsp; included, collapses to single spaces.
    """

    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }
    HIDDEN = {"script", "style", "noscript"}

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.dom = dom
        self.links: list[tuple[str, str]] = []
        self.rows: list[str] = []
        self._open: list[tuple[str, str | None, list[str]]] = []  # (tag, "row" or a link's href, its text)
        self._text: list[str] = []
        self.feed(dom)
        self.close()
        self.text = " ".join(" ".join(self._text).split())

    def href_text(self, href: str) -> list[str]:
        """The texts of the links to `href` (compared without their query string)."""
        return [text for link, text in self.links if link.split("?")[0] == href]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        attributes = dict(attrs)
        kind = "row" if tag == "tr" or attributes.get("role") == "row" else None
        self._open.append((tag, attributes.get("href") if tag == "a" else kind, []))

    def handle_endtag(self, tag: str) -> None:
        if not any(open_tag == tag for open_tag, _, _ in self._open):
            return
        while self._open:
            open_tag, kind, chunks = self._open.pop()
            text = " ".join(" ".join(chunks).split())
            if kind == "row":
                self.rows.append(text)
            elif kind is not None:
                self.links.append((kind, text))
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        if any(tag in self.HIDDEN for tag, _, _ in self._open):
            return
        self._text.append(data)
        for _, _, chunks in self._open:
            chunks.append(data)


def mlflow_page(url: str, route: str, **query: str) -> str:
    """An MLflow UI page's address at `url`: a hash route (`/models/NAME`), "Model training" mode."""
    return f"{url}/#{route}?{urllib.parse.urlencode({'workflowType': 'machine_learning', **query})}"


# The experiment page's query listing every run but the trials, in the order they ended: the stage runs,
# baselines and study parents in one flat list (sorted by creation, the UI nests the runs and shows the tree
# collapsed at its roots; a row expands only on a click).
PIPELINE_RUNS = {
    "searchFilter": "tags.`podium.trial` IS NULL",
    "orderByKey": "attributes.`end_time`",
    "orderByAsc": "true",
}


@dataclass(frozen=True)
class Post:
    """One request the receiver got: its path, its JSON body and its Authorization header."""

    path: str
    payload: dict[str, Any]
    authorization: str


@dataclass
class Receiver:
    port: int
    posts: list[Post]

    def url(self, path: str, credentials: str = "") -> str:
        return f"json://{credentials}127.0.0.1:{self.port}/{path}"


@contextmanager
def alert_receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 (a port of its own) in a thread, recording every POST it answers:
    where apprise's json:// channels deliver alerts."""
    posts: list[Post] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(Post(self.path, json.loads(body), self.headers.get("Authorization", "")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Receiver(server.server_address[1], posts)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
