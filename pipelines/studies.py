"""Optuna storages and study lookup: a journal file (its torn tail mended) or a database, and the key
that names a study's MLflow parent run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import optuna.storages.journal  # the journal backends and lock (optuna.storages loads it)
import sqlalchemy

from pipelines.errors import PodiumError
from pipelines.secrets import hide_password, refuse_password
from pipelines.warehouse.base import first_line

log = logging.getLogger(__name__)


STUDY_KEY = "podium.study_key"  # a study's own user attribute: what names its MLflow parent run


def beside_storage(storage: str, name: str) -> Path:
    """Folder `name` beside an Optuna journal or SQLite file (a server URL: the temp folder's podium-`name`).

    Backtests and cycles keep their own studies there, apart from the spec's.
    """
    path = storage.removeprefix("sqlite:///")
    if "://" in path:
        return Path(tempfile.gettempdir()) / f"podium-{name}"
    return Path(path).parent / name


def study_key(study: optuna.Study, storage: str) -> str:
    """The study's own name for its MLflow parent, kept in the study, so moving its storage keeps it.

    A study gets it once, from the storage it lives in then (what earlier parents were tagged with);
    the same study found through another path or URL later (a moved or copied project) keeps it.
    """
    key = study.user_attrs.get(STUDY_KEY)
    if not isinstance(key, str):
        key = storage_key(storage)
        study.set_user_attr(STUDY_KEY, key)
    return key


def storage_key(storage: str) -> str:
    """A short, filter-safe digest naming one Optuna storage (a URL, or a journal's absolute path)."""
    label = storage if "://" in storage else str(Path(storage).resolve())
    return hashlib.sha1(hide_password(label).encode()).hexdigest()[:16]


def trial_counts(study: optuna.Study) -> Counter[str]:
    """How many of the study's trials are in each state, by state name (COMPLETE, PRUNED, FAIL, ...)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def open_storage(storage: str, mend: bool = True) -> optuna.storages.BaseStorage:
    """A database URL as an RDB storage; a plain path is a resumable journal file (its torn tail mended)."""
    refuse_password(storage, "the Optuna storage")
    try:
        if "://" in storage:
            return _rdb_storage(storage)
        path = Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        mend_journal(path, repair=mend)
        return _journal(path)
    except (
        sqlalchemy.exc.SQLAlchemyError,
        ImportError,
        OSError,
    ) as exc:  # a bad URL or path, no server, no driver
        detail = hide_password((str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip("."))
        raise PodiumError(
            f"cannot open the Optuna storage {hide_password(storage)}: {detail}. Pass --storage (or set the "
            "profile's optuna_storage) to a journal file path, or to a database URL that is reachable and "
            "whose "
            "driver is installed (sqlite:///optuna.db, postgresql://user@host/db)."
        ) from None


def _journal(path: Path) -> optuna.storages.JournalStorage:
    """A journal storage, replayed now, so that a damaged record is one clear error."""
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except (ValueError, KeyError, TypeError) as exc:  # a record inside the file is not valid JSON
        raise PodiumError(
            f"the Optuna journal {path} is damaged inside (not only at its end: {first_line(exc)}): "
            "restore it "
            f"from a backup ({path.name}.torn-* if Podium made one), or move it aside to start the studies "
            "afresh."
        ) from None


def mend_journal(path: Path, repair: bool = True) -> Path | None:
    """Cut a journal's torn last record (a writer killed mid-line) after a backup; the backup's path, if any.

    Optuna skips a torn last line but fuses the next append onto it, after which every read fails.
    Every whole record, so every finished trial, is kept. With `repair=False` it only warns.
    """
    torn = _torn_tail(path)
    if not torn:
        return None
    if not repair:
        log.warning(
            "the Optuna journal %s ends in a torn record (%d bytes): `podium tune` mends it", path, torn
        )
        return None
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()  # writers append under this lock; a dead holder's lock expires after its grace period
    try:
        torn = _torn_tail(path)
        if not torn:
            return None
        backup = path.with_name(f"{path.name}.torn-{int(time.time())}")
        shutil.copy2(path, backup)
        os.truncate(path, path.stat().st_size - torn)
    finally:
        lock.release()
    log.warning(
        "the Optuna journal %s ended in a torn record (%d bytes, from a killed writer): cut it, kept every "
        "whole record; the original is %s",
        path,
        torn,
        backup,
    )
    return backup


def _torn_tail(path: Path, block: int = 1 << 16) -> int:
    """How many bytes follow the journal's last newline (0: whole, or no file)."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    with path.open("rb") as f:
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return size - (start + newline + 1)
            end = start
    return size


def _rdb_storage(url: str, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Open (on first use, create) an Optuna database; workers starting together race to create its schema."""
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.ArgumentError:  # a malformed URL or an unknown dialect: retrying cannot help
            raise
        except sqlalchemy.exc.SQLAlchemyError as exc:  # the loser of the race finds the schema half made
            log.debug("creating the Optuna schema at %s raced another worker: %s", url.split("@")[-1], exc)
            time.sleep(0.5 * (attempt + 1))
    return optuna.storages.RDBStorage(url)
