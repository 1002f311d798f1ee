"""Alerts reach a real loopback receiver through apprise's json://, one POST per matching channel, and no
secret in a channel URL is ever printed: not in Podium's log, not in apprise's, not on stdout or stderr."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.alerts import ALERT_KINDS, Alert, send
from pipelines.config import Profile
from pipelines.config_files import load_profile
from pipelines.errors import ConfigError
from pipelines.secrets import hide_channel
from tests.helpers import REPO
from tests.servers import Receiver, alert_receiver, free_port

SECRET = "planted-secret-9f3"
TOKEN = "Planted9f3SecretTokenXyz"  # a secret shaped as Slack's third token, which apprise checks
VARIABLE = "PODIUM_ALERT_TEST"
DRIFT = Alert("drift", "PSI 0.31 on GRID past 0.2", "period 2022: feature GRID drifted (PSI 0.31 > 0.2)")
PROMOTION = Alert("promotion", "f1_podium v7 is champion", "log_loss 0.612 -> 0.598 on the holdout")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 (a port of its own) in a thread, recording every POST it answers."""
    with alert_receiver() as started:
        yield started


def profile(*channels: dict[str, Any]) -> Profile:
    return Profile.model_validate({"name": "test", "warehouse": {"backend": "duckdb"}, "alerts": channels})


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_each_channel_that_takes_the_kind_gets_one_post(receiver: Receiver) -> None:
    alerts = profile({"url": receiver.url("all")}, {"url": receiver.url("drift-only"), "kinds": ["drift"]})
    assert send(alerts, PROMOTION) == 1
    assert [(p.path, p.payload["title"], p.payload["message"]) for p in receiver.posts] == [
        ("/all", PROMOTION.title, PROMOTION.body)
    ]
    assert receiver.posts[0].payload["type"] == "success"
    receiver.posts.clear()
    assert send(alerts, DRIFT) == 2
    assert sorted((p.path, p.payload["title"], p.payload["message"]) for p in receiver.posts) == [
        ("/all", DRIFT.title, DRIFT.body),
        ("/drift-only", DRIFT.title, DRIFT.body),
    ]
    assert send(profile(), DRIFT) == 0  # a profile without alerts sends nothing
    assert logging.getLogger("apprise").level == logging.NOTSET  # apprise's logger is as it was


def test_a_secret_in_the_variable_reaches_the_receiver_and_is_printed_nowhere(
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url = receiver.url("hook", credentials=f"user:{SECRET}@")
    monkeypatch.setenv(VARIABLE, url)
    caplog.set_level(logging.DEBUG, logger="pipelines")
    caplog.set_level(logging.DEBUG, logger="apprise")
    assert send(profile({"env": VARIABLE}), DRIFT) == 1
    [post] = receiver.posts
    assert (post.payload["title"], post.payload["message"]) == (DRIFT.title, DRIFT.body)
    assert base64.b64decode(post.authorization.removeprefix("Basic ")).decode() == f"user:{SECRET}"
    assert hide_channel(url) == f"json://user:***@127.0.0.1:{receiver.port}/hook"
    assert "apprise: JSON POST URL" in caplog.text  # apprise's debug log was captured, masked
    assert f"drift alert sent to json://user:***@127.0.0.1:{receiver.port}/hook (${VARIABLE})" in caplog.text
    out, err = capfd.readouterr()
    assert SECRET not in caplog.text + out + err
    assert not any(SECRET in record.getMessage() for record in caplog.records)


def test_apprise_printing_a_secret_itself_is_masked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """apprise's own warning about a bad token quotes the token; through Podium it is masked."""
    import apprise

    url = f"slack://{SECRET}"
    caplog.set_level(logging.DEBUG, logger="apprise")
    apprise.Apprise.instantiate(url)
    assert SECRET in caplog.text  # the leak this guards against: apprise alone prints it
    caplog.clear()
    monkeypatch.setenv(VARIABLE, url)
    caplog.set_level(logging.DEBUG, logger="pipelines")
    assert send(profile({"env": VARIABLE}), DRIFT) == 0
    [warning] = warnings(caplog)
    assert warning.getMessage().startswith(
        f"drift alert not sent to slack://*** (${VARIABLE}): apprise cannot"
    )
    assert "Token (***)" in warning.getMessage()
    out, err = capfd.readouterr()
    assert SECRET not in caplog.text + out + err


def test_a_dead_endpoint_is_one_warning_naming_the_channel_masked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    dead = free_port()
    monkeypatch.setenv(VARIABLE, f"json://user:{SECRET}@127.0.0.1:{dead}/hook")
    caplog.set_level(logging.DEBUG, logger="pipelines")
    caplog.set_level(logging.DEBUG, logger="apprise")
    assert send(profile({"env": VARIABLE}), PROMOTION) == 0
    [warning] = warnings(caplog)
    assert warning.name == "pipelines.alerts"
    assert warning.getMessage().startswith(
        f"promotion alert not sent to json://user:***@127.0.0.1:{dead}/hook (${VARIABLE}): A Connection error"
    )
    assert SECRET not in caplog.text


def test_an_unset_variable_is_one_warning_naming_it(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    alerts = profile({"env": VARIABLE}, {"url": receiver.url("hook")})
    assert send(alerts, Alert("failed_cycle", "cycle 2022-05 failed", "score: the warehouse refused")) == 1
    [warning] = warnings(caplog)
    assert warning.getMessage() == (
        f"failed_cycle alert not sent to ${VARIABLE}: that environment variable is unset or empty"
    )
    assert [(p.path, p.payload["type"]) for p in receiver.posts] == [("/hook", "failure")]


def test_a_profile_with_alerts_loads(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "alerting.yaml"
    path.parent.mkdir()
    path.write_text(
        "warehouse:\n  backend: duckdb\n"
        "alerts:\n"
        "  - env: PODIUM_ALERT_SLACK\n    kinds: [refusal, failed_cycle]\n"
        "  - url: json://127.0.0.1:8080/hook\n"
    )
    loaded = load_profile(str(path))
    assert [(c.url, c.env, c.kinds) for c in loaded.alerts] == [
        (None, "PODIUM_ALERT_SLACK", ["refusal", "failed_cycle"]),
        ("json://127.0.0.1:8080/hook", None, list(ALERT_KINDS)),
    ]
    assert load_profile("local", root=REPO).alerts == []


def test_apprise_is_imported_only_to_deliver_or_check_a_channel() -> None:
    """Importing Podium and loading a profile without alerts leave apprise (and its plugins) unloaded."""
    code = (
        "import sys, pipelines.alerts, pipelines.config_files as files\n"
        "files.load_profile('local')\n"
        "print('apprise' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert (run.returncode, run.stdout.strip()) == (0, "False"), run.stderr


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        (f"json://user:{SECRET}@127.0.0.1:8080/hook", SECRET),
        (f"slack://T1JJ3T3L2/A1BRTD4JD/{TOKEN}/#podium", TOKEN),
        (f"https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/{TOKEN}", TOKEN),
        (f"json://127.0.0.1:8080/hook?+Authorization=Bearer%20{SECRET}", SECRET),
    ],
)
def test_a_url_in_the_profile_carrying_a_secret_is_refused(tmp_path: Path, url: str, secret: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"warehouse:\n  backend: duckdb\nalerts:\n  - url: '{url}'\n")
    with pytest.raises(ConfigError, match=r"alerts\.0\.url: the alert channel .* carries a secret") as caught:
        load_profile(str(path))
    assert "put the whole URL in an environment variable and name it with env: instead of url:" in str(
        caught.value
    )
    assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("channel", "problem"),
    [
        ("{}", r"alerts\.0: give a channel either url: .* or env: "),
        ("{url: 'json://127.0.0.1:8080/hook', env: PODIUM_ALERT_SLACK}", "give a channel either url: "),
        (
            f"{{env: 'json://user:{SECRET}@127.0.0.1/hook'}}",
            r"alerts\.0\.env: env names an environment variable",
        ),
        ("{url: 'nosuchservice://127.0.0.1/hook'}", r"alerts\.0\.url: apprise cannot read the alert channel"),
        ("{env: PODIUM_ALERT_SLACK, kinds: [promotion, rollback]}", r"alerts\.0\.kinds\.1: Input should be"),
    ],
)
def test_a_malformed_channel_is_one_clear_error(tmp_path: Path, channel: str, problem: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"warehouse:\n  backend: duckdb\nalerts:\n  - {channel}\n")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_profile(str(path))
    assert SECRET not in str(caught.value)
