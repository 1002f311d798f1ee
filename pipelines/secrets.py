"""Secrets stay out of sight: one mask for every URL Podium prints, and no password in a URL it is given.

Passwords come from where their client reads them, never from conf/ or a parameter MLflow logs:
PGPASSWORD or ~/.pgpass for PostgreSQL (libpq), MLFLOW_TRACKING_PASSWORD for an MLflow server,
SNOWFLAKE_PASSWORD or connections.toml for Snowflake. An alert channel's URL (apprise's, whose
tokens may sit anywhere in it) comes from an environment variable the profile names, and is printed
only as `hide_channel` shows it; apprise's own log, while Podium uses it, prints none of it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

from pipelines.errors import ConfigError

# scheme://user:password@host: the password is whatever runs from the colon to the last @ of the word
_PASSWORD = re.compile(r"(//[^/:@\s]+):[^\s]*@")
_HEADER = re.compile(r"[?&](\+|%2B)", re.IGNORECASE)  # apprise's ?+Name=value: an HTTP header, often a token
_WORD = re.compile(r"[^/:@?&=#,;\s()'\"]+")  # the pieces of a URL a secret may be
MIN_SECRET = 4  # shorter pieces are not hidden in apprise's messages, lest every "com" or "443" go
APPRISE_LOGGER = "apprise"
_APPRISE_LOG = threading.RLock()  # held by whoever holds apprise's log records (apprise_held)


def hide_password(text: str) -> str:
    """Text fit to print: every URL in it as scheme://user:***@host/db."""
    return _PASSWORD.sub(r"\1:***@", text)


def refuse_password(url: str, what: str) -> str:
    """`url` unchanged, unless it carries a password: then one error naming where the password goes."""
    if _PASSWORD.search(url):
        raise ConfigError(
            f"{what} {hide_password(url)} carries a password: drop it from the URL and let its client read "
            "it (PGPASSWORD or ~/.pgpass for PostgreSQL, MLFLOW_TRACKING_PASSWORD for an MLflow server): a "
            "password in a URL ends up in parameters MLflow logs and in what is printed."
        )
    return url


class MaskPasswords(logging.Filter):
    """A log filter that hides every URL's password in a record's message (and its traceback, if any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:  # the traceback goes into the message, masked; no handler formats it again
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = record.exc_text = None
        record.msg, record.args = hide_password(message), ()
        return True


def hide_channel(url: str) -> str:
    """An alert channel's URL fit to print, wherever Podium prints one.

    It is apprise's private form of the URL (passwords and tokens elided) without its options, which
    may hold headers; a URL apprise cannot read shows its scheme alone.
    """
    service, _ = _read_channel(url)
    if service is None:
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*(?=://)", url)
        return f"{scheme.group() if scheme else ''}://***"
    return hide_password(service.url(privacy=True).split("?", 1)[0])


def channel_secrets(url: str) -> frozenset[str]:
    """The pieces of a channel's URL that `hide_channel` hides: text never to be printed."""
    masked = hide_channel(url)
    shown = set(_WORD.findall(masked)) | set(_WORD.findall(unquote(masked)))
    pieces = set(_WORD.findall(url)) | set(_WORD.findall(unquote(url)))
    return frozenset(piece for piece in pieces - shown if len(piece) >= MIN_SECRET)


def hide_secrets(text: str, secrets: frozenset[str]) -> str:
    """`text` with each of `secrets` in it replaced by ***."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def refuse_channel_secret(url: str) -> str:
    """`url` unchanged if apprise reads it and it carries no secret; else one error naming the fix."""
    service, said = _read_channel(url)
    if service is None:
        secrets = channel_secrets(url)
        reason = "; ".join(hide_secrets(r.getMessage(), secrets) for r in said) or "no reason given"
        raise ConfigError(
            f"apprise cannot read the alert channel {hide_channel(url)} ({reason}): write it as apprise's "
            "documentation of that service shows"
        )
    if service.url(privacy=True) != service.url() or _PASSWORD.search(url) or _HEADER.search(url):
        raise ConfigError(
            f"the alert channel {hide_channel(url)} carries a secret (a password, token or header), and "
            "conf/ holds none: put the whole URL in an environment variable and name it with env: instead "
            "of url: (e.g. env: PODIUM_ALERT_SLACK)"
        )
    return url


@contextmanager
def apprise_held(level: int = logging.WARNING) -> Iterator[list[logging.LogRecord]]:
    """apprise's log records while it lasts, from `level` up at least, held in a list and never printed.

    The caller masks them and says what matters. One thread at a time holds apprise's log, so each
    caller gets the records of its own work.
    """
    held, logger = _Hold(), logging.getLogger(APPRISE_LOGGER)
    with _APPRISE_LOG:
        before = logger.level
        logger.setLevel(min(level, logger.getEffectiveLevel()))  # held, so safe to ask for
        logger.addFilter(held)
        try:
            yield held.records
        finally:
            logger.removeFilter(held)
            logger.setLevel(before)


def _read_channel(url: str) -> tuple[Any, list[logging.LogRecord]]:
    """apprise's service for a channel URL (None if it cannot read it), and what apprise said meanwhile."""
    import apprise  # here: a profile without alerts never imports it

    with apprise_held() as said:
        return apprise.Apprise.instantiate(url), said


class _Hold(logging.Filter):
    """A filter on apprise's logger that keeps every record, unprinted, for Podium to mask and report."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False
