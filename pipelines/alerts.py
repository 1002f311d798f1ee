"""Alerts: the lifecycle tells people of a promotion, a refusal, drift past the threshold, a failed cycle.

Input: an `Alert` and the profile's `alerts`, each channel (pipelines.config.AlertChannel) a URL with no
secret in it or the environment variable holding one. Output: one message per channel that takes the
alert's kind, through apprise (Slack, e-mail, webhooks, json://, ...). An alert never fails the stage that
sends it: a channel that cannot be reached is one warning, naming it as `pipelines.secrets.hide_channel`
shows every channel URL. apprise's own log is held while it works and reported masked, through this
module's logger, so no secret in a URL is ever printed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import Field, field_validator, model_validator

from pipelines.config_types import Strict
from pipelines.errors import ConfigError
from pipelines.secrets import apprise_held, channel_secrets, hide_channel, hide_secrets, refuse_channel_secret

if TYPE_CHECKING:
    from pipelines.config import Profile

log = logging.getLogger(__name__)

AlertKind = Literal["promotion", "refusal", "drift", "failed_cycle"]
ALERT_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)


class AlertChannel(Strict):
    """Where alerts go: an apprise URL with no secret in it (`url`), or the variable holding one (`env`)."""

    url: str | None = Field(
        None, description="an apprise URL with no secret in it, e.g. json://host:8080/hook"
    )
    env: str | None = Field(
        None, description="the environment variable holding the URL, secrets and all, e.g. PODIUM_ALERT_SLACK"
    )
    kinds: list[AlertKind] = Field(
        default_factory=lambda: list(ALERT_KINDS),
        min_length=1,
        description="the alerts it takes; default all",
    )

    @field_validator("url")
    @classmethod
    def _no_secret(cls, value: str | None) -> str | None:
        try:
            return value if value is None else refuse_channel_secret(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                "env names an environment variable (e.g. PODIUM_ALERT_SLACK), not the URL itself"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> AlertChannel:
        if (self.url is None) == (self.env is None):
            raise ValueError("give a channel either url: (no secret in it) or env: (a variable holding it)")
        return self


NOTIFY_TYPES: dict[AlertKind, str] = {  # apprise's notify types: the colour or icon a channel shows
    "promotion": "success",
    "refusal": "warning",
    "drift": "warning",
    "failed_cycle": "failure",
}
APP_ID = "Podium"  # how apprise signs a message (a Slack footer, a mail's sender name)


@dataclass(frozen=True)
class Alert:
    """One thing to tell: its kind, a one-line title and a plain-text body, with no secret in either."""

    kind: AlertKind
    title: str
    body: str


def send(profile: Profile, alert: Alert) -> int:
    """Deliver `alert` to every channel of the profile that takes its kind; how many accepted it.

    It never raises: a channel whose variable is unset, or that refuses the alert or cannot be reached, is
    one warning naming the channel (its URL masked) and why.
    """
    return sum(_guarded(channel, alert) for channel in profile.alerts if alert.kind in channel.kinds)


def _guarded(channel: AlertChannel, alert: Alert) -> bool:
    """`_deliver`, with whatever it might still raise turned into a warning (its type only: no URL in it)."""
    try:
        return _deliver(channel, alert)
    except Exception as exc:  # noqa: BLE001 - an alert never fails the stage that sent it
        where = f"${channel.env}" if channel.env else "a channel"
        log.warning("%s alert not sent to %s: %s", alert.kind, where, type(exc).__name__)
        return False


def _deliver(channel: AlertChannel, alert: Alert) -> bool:
    """Whether the channel accepted the alert; if not, one warning saying which channel and why."""
    url = channel.url or os.environ.get(channel.env or "") or None
    if url is None:
        log.warning(
            "%s alert not sent to $%s: that environment variable is unset or empty", alert.kind, channel.env
        )
        return False
    name = hide_channel(url) + (f" (${channel.env})" if channel.env else "")
    problem = _notify(url, alert)
    if problem is not None:
        log.warning("%s alert not sent to %s: %s", alert.kind, name, problem)
        return False
    log.info("%s alert sent to %s", alert.kind, name)
    return True


def _notify(url: str, alert: Alert) -> str | None:
    """None once the channel accepted the alert, else why not, with the URL's secrets hidden."""
    import apprise  # here: importing Podium, or running a profile without alerts, never loads apprise

    added = accepted = False
    error = ""
    with apprise_held(min(logging.WARNING, log.getEffectiveLevel())) as said:  # one delivery at a time
        try:
            notifier = apprise.Apprise(asset=apprise.AppriseAsset(app_id=APP_ID, app_desc=f"{APP_ID} alerts"))
            added = notifier.add(url)
            accepted = added and bool(
                notifier.notify(
                    body=alert.body,
                    title=alert.title,
                    notify_type=NOTIFY_TYPES[alert.kind],
                    body_format=apprise.NotifyFormat.TEXT,
                )
            )
        except Exception as exc:  # noqa: BLE001 - an alert never fails the stage that sent it
            error = f"{type(exc).__name__}: {exc}"
    return _outcome(said, channel_secrets(url), added, accepted, error)


def _outcome(
    said: list[logging.LogRecord], secrets: frozenset[str], added: bool, accepted: bool, error: str
) -> str | None:
    """What apprise said, masked and logged at debug; None if it accepted, else its warnings as the reason."""
    messages = [(record.levelno, hide_secrets(record.getMessage(), secrets)) for record in said]
    for level, message in messages:
        if accepted or level < logging.WARNING:
            log.debug("apprise: %s", message)
    if accepted:
        return None
    reasons = [message for level, message in messages if level >= logging.WARNING]
    reason = "; ".join([*reasons, hide_secrets(error, secrets)] if error else reasons) or "no reason given"
    return reason if added or error else f"apprise cannot read the URL ({reason})"
