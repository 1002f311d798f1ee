"""Regenerate the README's images from the demo's MLflow store: `python docs/capture.py` after `make demo`.

Serves a copy of ./mlflow.db with `mlflow server` on loopback (the runs' artifacts stay where the demo
wrote them: ./mlruns, or ./mlartifacts behind a server), renders its pages in headless Chromium with the
tests' helpers and writes, next to this script:

- run_tree.png: the experiment's runs as a tree, in the order they started: `main` open on its stages, `tune`
  on its baselines and studies, and the champion's study on its trials (the UI keeps open rows only in the
  browser, so this page is clicked open over Chromium's DevTools protocol);
- leaderboard.png: `plots/leaderboard.png` of the latest `tune` run;
- champion.png: the champion's model version page: its aliases, stage and model card;
- backtest.png: `plots/backtest.png` of the latest `backtest` run, if `podium backtest` ran.

Screenshots are cropped to the page's content, without the navigation bar and the assistant panel.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.servers`, when run as a script

import yaml  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402

from pipelines.config import Spec  # noqa: E402
from pipelines.config_files import load_profile, load_spec  # noqa: E402
from tests.servers import (  # noqa: E402
    CHROMIUM_FLAGS,
    RenderedPage,
    app_server,
    kill_session,
    mlflow_page,
    mlflow_server,
    rendered,
)

DOCS = Path(__file__).resolve().parent
WIDTH = 1800
WHITE = (255, 255, 255)


def screenshot(url: str, ready: Callable[[RenderedPage], bool], path: Path, height: int) -> None:
    """Render `url` until `ready(page)`, save it to `path` cropped to the page's content."""
    page = rendered(url, ready, path, (WIDTH, height))
    if not ready(page):
        raise SystemExit(f"{url} did not render as expected; it showed: {page.text[:2000]}")
    crop(path)


def crop(path: Path) -> None:
    """Crop the screenshot at `path` to the page's content, in place."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    rgb.crop(content_box(rgb)).save(path, optimize=True)


def content_box(image: Image.Image, margin: int = 8) -> tuple[int, int, int, int]:
    """The box of the page's white card: right of the navigation bar, left of the assistant panel.

    The panel opens by itself on a loopback host. The whole image if no card shows; `image` is RGB.
    """
    pixels = image.load()
    white = [pixels[x, 20] == WHITE for x in range(image.width)] + [False]
    start = next((x for x in range(image.width) if all(white[x : x + 200])), None)
    if start is None:
        return 0, 0, image.width, image.height
    end = white.index(False, start)
    return max(start - margin, 0), 0, min(end + margin, image.width), image.height


class DevTools:
    """A headless Chromium with one tab, driven over the DevTools protocol on a pipe; a context manager.

    Started with the tests' flags and a profile of its own, `--remote-debugging-pipe` makes it read
    NUL-terminated JSON commands from its fd 3 and write answers and events to its fd 4. Events are
    skipped: pages are polled. Every wait is bounded; one that runs out raises SystemExit.
    """

    def __init__(self, window: tuple[int, int], timeout: float = 30.0) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            raise SystemExit("chromium is not on PATH (Debian: apt-get install chromium)")
        self.window, self.timeout, self.ids, self.buffer, self.session = window, timeout, 0, b"", ""
        self.profile = tempfile.TemporaryDirectory(prefix="podium-docs-chromium-", ignore_cleanup_errors=True)
        commands, self.commands = os.pipe()  # Chromium reads `commands` as fd 3...
        self.answers, answers = os.pipe()  # ...and writes `answers` as fd 4

        def child_fds() -> None:  # dup first: a pipe's end may already sit on fd 3 or 4
            read, write = os.dup(commands), os.dup(answers)
            os.dup2(read, 3)
            os.dup2(write, 4)

        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}", "--remote-debugging-pipe"]
        self.browser = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=child_fds,
            start_new_session=True,
        )
        os.close(commands)
        os.close(answers)

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *_: object) -> None:
        """Close the browser, kill its helpers (its session holds them) and drop its profile."""
        try:
            if self.browser.poll() is None:
                self._write({"id": 0, "method": "Browser.close"})
                self.browser.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            kill_session(self.browser.pid)
            self.browser.wait()
            os.close(self.commands)
            os.close(self.answers)
            self.profile.cleanup()

    def open(self, url: str) -> None:
        """Open `url` in a new tab of `window`'s size, the tab every later command goes to."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        width, height = self.window
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.send("Page.navigate", url=url)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run a command (in the tab once one is open) and return its result; RuntimeError if it failed."""
        self.ids += 1
        self._write({"id": self.ids, "method": method, "params": params, "sessionId": self.session or None})
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.answers], [], [], left)[0]:
                    raise SystemExit(f"chromium did not answer {method} within {self.timeout:.0f}s")
                chunk = os.read(self.answers, 1 << 20)
                if not chunk:
                    raise SystemExit(f"chromium closed its DevTools pipe on {method}")
                self.buffer += chunk
            message, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(message)
            if answer.get("id") == self.ids:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def _write(self, command: dict[str, Any]) -> None:
        os.write(
            self.commands, json.dumps({k: v for k, v in command.items() if v is not None}).encode() + b"\0"
        )

    def evaluate(self, js: str) -> Any:
        """The value of the JavaScript expression `js` in the tab (promises awaited); raises if it threw."""
        result = self.send("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{js} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, js: str, what: str, timeout: float = 60.0) -> Any:
        """Poll `js` until it is truthy and return it: SystemExit naming `what` after `timeout` seconds."""
        deadline, failure = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:  # the page may be navigating: its context may be gone for a moment
                if value := self.evaluate(js):
                    return value
            except RuntimeError as error:
                failure = error
            time.sleep(0.25)
        raise SystemExit(
            f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({failure})" if failure else "")
        )

    def screenshot(self) -> bytes:
        """The tab's viewport as a PNG."""
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])


# JavaScript on the experiment's runs page (ag-grid): whether the rows of the runs `ids` show in the table's
# viewport; a click on the expander of run `id`'s row; the Run Name column sized to its names (ag-grid
# autosizes a column on a double click of its header's resize handle).
ROWS_SHOWN = """(ids => {
  const table = document.querySelector('.ag-body-viewport');
  return !!table && ids.every(id => {
    const link = document.querySelector(`[role=gridcell] a[href$="/runs/${id}"]`);
    return !!link && link.getBoundingClientRect().bottom <= table.getBoundingClientRect().bottom;
  });
})(%s)"""
EXPAND = """(id => {
  const link = document.querySelector(`[role=gridcell] a[href$="/runs/${id}"]`);
  const button = link && link.closest('[role=gridcell]').querySelector('button');
  button?.click();
  return !!button;
})(%s)"""
FIT_NAMES = """new Promise(done => {
  document.querySelector('.ag-header-cell[col-id="attributes.`Run Name`"] .ag-header-cell-resize')
    .dispatchEvent(new MouseEvent('dblclick', {bubbles: true}));
  requestAnimationFrame(() => requestAnimationFrame(() => done(true)));
})"""


def run_tree(url: str, client: MlflowClient, experiment_id: str, family: str, path: Path) -> None:
    """Screenshot the run tree to `path`: the latest `main`, its `tune` and `family`'s study open."""

    def runs(condition: str) -> list[Run]:
        return client.search_runs([experiment_id], condition, max_results=1000, order_by=["start_time DESC"])

    def only(condition: str, what: str) -> Run:
        found = runs(condition)
        if not found:
            raise SystemExit(f"no {what} in experiment {experiment_id}: run `make demo` first.")
        return found[0]

    child = "tags.`mlflow.parentRunId` = '{}'".format
    main = only("tags.`podium.stage` = 'main'", "`main` run")
    tune = only(f"tags.`podium.stage` = 'tune' AND {child(main.info.run_id)}", "`tune` run under `main`")
    study = only(
        f"tags.`podium.family` = '{family}' AND {child(tune.info.run_id)}", f"{family} study under `tune`"
    )
    shown = [*runs("tags.`mlflow.parentRunId` IS NULL")]  # the roots, then the rows the clicks open
    for parent in (main, tune, study):
        shown += runs(child(parent.info.run_id))
    in_order = {"orderByKey": "attributes.start_time", "orderByAsc": "true"}  # the order the runs started
    address = mlflow_page(url, f"/experiments/{experiment_id}/runs", **in_order)
    with DevTools((WIDTH, 320 + 32 * len(shown))) as browser:
        browser.open(address)
        for parent in (main, tune, study):
            browser.wait_for(
                ROWS_SHOWN % json.dumps([parent.info.run_id]), f"the row of run {parent.info.run_name}"
            )
            if not browser.evaluate(EXPAND % json.dumps(parent.info.run_id)):
                raise SystemExit(f"the row of run {parent.info.run_name} has no expander to click")
        browser.wait_for(
            ROWS_SHOWN % json.dumps([run.info.run_id for run in shown]), f"the {len(shown)} rows"
        )
        browser.evaluate(FIT_NAMES)
        path.write_bytes(browser.screenshot())
    crop(path)


APP_PAGES = {  # the app's pages in the README, and a text each shows once drawn
    "predictions": "Scored at",
    "health": "holdout",
    "drift": "PSI threshold",
    "promotions": "Champion: v",
}


def app_pages(root: Path, spec: Spec) -> list[str]:
    """Screenshots of `podium app` on the demo's warehouse, read-only: docs/app_<page>.png."""
    profile, spec_file = root / "app_profile.yaml", root / "app_spec.yaml"
    demo = load_profile("local").warehouse  # what `make demo` wrote
    warehouse = {"backend": "duckdb", "path": str(Path(demo.path).resolve())}
    profile.write_text(yaml.safe_dump({"warehouse": warehouse}))
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True)))
    written = []
    with app_server(root / "app", profile, spec_file) as url:
        for slug, shown in APP_PAGES.items():
            path = DOCS / f"app_{slug}.png"
            page = rendered(f"{url}/?page={slug}", lambda p, text=shown: text in p.text, path, (WIDTH, 900))
            if shown not in page.text:
                raise SystemExit(f"the app's {slug} page did not render; it showed: {page.text[:2000]}")
            written.append(path.name)
    return written


def main(store: Path = Path("mlflow.db")) -> None:
    """Write docs/run_tree.png, leaderboard.png, champion.png (and backtest.png) from the local store, and
    app_<page>.png from `podium app` on the demo's warehouse."""
    if not store.exists():
        raise SystemExit(f"no {store.resolve()}: run `make demo` first, then this from the same folder.")
    spec = load_spec(os.environ.get("PODIUM_SPEC"), root=ROOT)
    with tempfile.TemporaryDirectory(prefix="podium-docs-") as tmp:
        root = Path(tmp)
        shutil.copyfile(
            store, root / "mlflow.db"
        )  # the server and the UI may write; the demo's store stays as is
        if Path("mlartifacts").is_dir():  # artifacts a server proxied: serve them from where they are
            (root / "artifacts").symlink_to(Path("mlartifacts").resolve())
        with mlflow_server(root) as url:
            client = MlflowClient(url)
            experiment = client.get_experiment_by_name(spec.name)
            if experiment is None:
                raise SystemExit(f"{store} has no experiment {spec.name}: run `make demo` first.")
            ids = [experiment.experiment_id]

            champion = client.get_model_version_by_alias(spec.model_name, "champion")
            run_tree(url, client, ids[0], champion.tags["podium.family"], DOCS / "run_tree.png")

            tune = client.search_runs(ids, "tags.`podium.stage` = 'tune'", order_by=["start_time DESC"])[0]
            plot = client.download_artifacts(tune.info.run_id, "plots/leaderboard.png", tmp)
            shutil.copyfile(plot, DOCS / "leaderboard.png")
            written = ["run_tree.png", "leaderboard.png", "champion.png"]

            backtests = client.search_runs(
                ids, "tags.`podium.stage` = 'backtest'", order_by=["start_time DESC"]
            )
            if backtests:
                plot = client.download_artifacts(backtests[0].info.run_id, "plots/backtest.png", tmp)
                shutil.copyfile(plot, DOCS / "backtest.png")
                written.append("backtest.png")

            address = mlflow_page(url, f"/models/{spec.model_name}/versions/{champion.version}")
            shown = [f"Version {champion.version}", "@ champion", "Intended use"]
            screenshot(
                address, lambda page: all(s in page.text for s in shown), DOCS / "champion.png", height=668
            )
            os.environ["MLFLOW_TRACKING_URI"] = url  # the app's champion card links to this registry
            written += app_pages(root, spec)
    for name in written:
        print(DOCS / name)


if __name__ == "__main__":
    main()
