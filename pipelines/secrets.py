"""Secrets stay out of sight: one mask for every URL Podium prints, and no password in a URL it is given.

Passwords come from where their client reads them, never from conf/ or a parameter MLflow logs:
PGPASSWORD or ~/.pgpass for PostgreSQL (libpq), MLFLOW_TRACKING_PASSWORD for an MLflow server,
SNOWFLAKE_PASSWORD or connections.toml for Snowflake.
"""

from __future__ import annotations

import logging
import re

from pipelines.errors import ConfigError

# scheme://user:password@host: the password is whatever runs from the colon to the last @ of the word
_PASSWORD = re.compile(r"(//[^/:@\s]+):[^\s]*@")


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
