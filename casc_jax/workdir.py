"""The workdir of a launcher run: checks, the lock that keeps two runs apart, and clean-up after a failure.

No JAX here: everything runs before JAX starts, so a bad workdir costs nothing.

The lock is WORKDIR/.lock, a small JSON file with the PID, host, mode and start time of the run that holds
it, created with O_EXCL. A second run on the same workdir refuses at once, naming that PID; a lock whose
process is gone (same host, PID not running) is stale and taken over with a message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time

from casc_jax.cli import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_EMPTY_EVENTS = ("events.out.tfevents.", 1024)  # a TensorBoard file with no logged values (header only)


def check_not_file(path: str, flag: str = "--workdir") -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag}={path} is a file, not a folder; pass a folder (it is created if missing)")


def nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_writable(path: str, flag: str = "--workdir") -> None:
    """UserError unless a file can be created in `path` (or, when it is missing, in its nearest parent).

    Probes with a real file, so read-only mounts, ACLs and root on a read-only file system all count.
    """
    check_not_file(path, flag)
    where = nearest_existing(path)
    if not os.path.isdir(where):
        raise UserError(f"{flag}={path}: {where} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=where)
    except OSError as err:
        what = "" if where == os.path.abspath(path) else f" ({where}, where it would be created)"
        raise UserError(
            f"{flag}={path} is not writable{what}: {err.strerror}; this run writes its outputs there, so pass a "
            "writable folder (copy the workdir first if it is read-only)"
        ) from None
    os.close(fd)
    os.remove(probe)


def has_checkpoints(workdir: str) -> bool:
    """True when some WORKDIR/<stage>/checkpoints folder exists (any system's layout)."""
    if not os.path.isdir(workdir):
        return False
    return any(os.path.isdir(os.path.join(workdir, d, "checkpoints")) for d in os.listdir(workdir))


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(workdir: str) -> dict | None:
    """The lock's record, {} when it exists but is unreadable, None when there is none."""
    try:
        with open(os.path.join(workdir, LOCK_NAME)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _held_by_other(record: dict) -> bool:
    """True when the lock's process may still be running (another host's PID cannot be checked)."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int):
        return False
    if host and host != socket.gethostname():
        return True
    return pid != os.getpid() and _pid_running(pid)


def _describe(record: dict) -> str:
    started = record.get("started")
    when = time.strftime(" started %Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if started else ""
    return f"process {record.get('pid')} (mode {record.get('mode', '?')}{when} on host {record.get('host', '?')})"


def check_unlocked(workdir: str) -> None:
    """UserError at once when another live run holds the workdir's lock."""
    record = read_lock(workdir)
    if record and _held_by_other(record):
        raise UserError(
            f"{workdir} is in use by {_describe(record)}; wait for it to end or use another --workdir "
            f"(if that run is gone, delete {os.path.join(workdir, LOCK_NAME)})"
        )


class WorkdirLock:
    """Holds WORKDIR/.lock for the life of a run; `release` removes it only if it is still ours."""

    def __init__(self, workdir: str, mode: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "mode": mode, "started": int(time.time())}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record = read_lock(workdir)
                if record is None:  # removed in between: try again
                    continue
                if _held_by_other(record):
                    check_unlocked(workdir)
                log.warning(f"[launch] taking over a stale lock of {_describe(record)}, which is no longer running")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f)
            return
        raise UserError(f"cannot take the lock {self.path}; another run is starting on this workdir")

    def release(self) -> None:
        if read_lock(os.path.dirname(self.path)) == self.record:
            os.remove(self.path)


def remove_if_empty(workdir: str) -> bool:
    """Remove a workdir this run created when it holds nothing worth keeping: only folders and TensorBoard
    files without a logged value. Returns True when it was removed."""
    prefix, limit = _EMPTY_EVENTS
    for root, _, files in os.walk(workdir):
        for f in files:
            if not f.startswith(prefix) or os.path.getsize(os.path.join(root, f)) >= limit:
                return False
    shutil.rmtree(workdir, ignore_errors=True)
    return not os.path.exists(workdir)
