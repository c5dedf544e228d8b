"""Files that many processes share: run locks, and atomic writes that survive a crash.

Run locks: one protocol for every backend
-----------------------------------------
A run being trained, or adopted from another grid, is held through ``<run dir>.lock`` by whoever
writes its directory: a local grid worker, a Ray grid's driver (for every run it has in flight), an
adopting grid. :func:`claim` takes it, :func:`release` gives it back, :func:`is_locked` asks.

1. The holder opens (creating) the lock file and takes an exclusive, non-blocking ``flock`` on it.
   The kernel drops that lock when the holder dies, however it dies (SIGKILL included), so a dead
   holder never blocks a run, a reused pid never keeps one blocked, and two processes that find the
   same dead lock never both take it over (only one gets the ``flock``).
2. It writes ``<pid>@<host>`` into the file (the format older versions wrote and read) and, while it
   holds the lock, refreshes the file's modification time every :data:`HEARTBEAT_SECONDS`.
3. A lock file whose ``flock`` is free is still respected when it was written by a process that does
   not ``flock`` (an older version, or a holder on another host whose file-system locks do not reach
   here):

   * it names this host: respected while that pid is alive *and* was started before the lock file
     was last written (a pid reused by a younger process does not count);
   * it names another host: respected while the file was refreshed within :data:`STALE_AFTER_SECONDS`
     (a live holder of this version refreshes it every minute); an older one is taken over, with a
     warning naming the host and pid. A holder on another host that has stopped refreshing (an older
     version, or a process suspended for longer than that) therefore loses its runs.
4. :func:`release` deletes the file while it still holds the ``flock``, then drops it; a process that
   took the ``flock`` of the deleted file sees that the path no longer leads to it and tries again.

Why not ``filelock`` or ``portalocker``: both are this step 1 alone. ``filelock`` opens the lock file
with ``O_TRUNC`` (a process that merely tries the lock erases the holder's name) and leaves empty lock
files behind, which versions of this package that do not ``flock`` read as abandoned after a minute
and take over while a holder still trains; neither says who holds a lock, and neither has a rule for
a holder on another host whose file system does not carry ``flock`` across hosts (NFS mounted with
``nolock``, some cluster file systems). The rules above need the file's contents and its
modification time, so the file is managed here, with ``fcntl.flock`` from the standard library.

Atomic writes
-------------
:func:`write_atomically` writes a file so that a reader sees the old contents or the new, never a
part, even after a power loss: a uniquely named temporary file beside it, flushed and ``fsync``-ed,
renamed over the target, then the directory ``fsync``-ed so the rename itself is on disk.
"""

from __future__ import annotations

import os
import platform
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the O_EXCL protocol of step 3 alone
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "HEARTBEAT_SECONDS",
    "LOCK_SUFFIX",
    "STALE_AFTER_SECONDS",
    "claim",
    "fsync_dir",
    "is_locked",
    "lock_owner",
    "lock_path",
    "process_start_time",
    "refresh_held_locks",
    "release",
    "write_atomically",
]

LOCK_SUFFIX = ".lock"
#: a holder refreshes its lock files this often
HEARTBEAT_SECONDS = 60.0
#: a lock file from another host that was not refreshed for this long is taken over
STALE_AFTER_SECONDS = 600.0

PathLike = Union[str, Path]

# ------------------------------------------------------------------------------------------------
# durable atomic writes
# ------------------------------------------------------------------------------------------------


def fsync_dir(folder: PathLike) -> None:
    """Make a rename or creation inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_atomically(path: PathLike, data: Union[bytes, str]) -> None:
    """Replace ``path`` by ``data`` atomically and durably (module docstring). The temporary file's
    name is unique to this call, so two writers of one path never share it."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), or None where this cannot be read
    (no such process; no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    if len(fields) < 20 or fields[0] == "Z":  # a zombie has exited
        return None
    return float(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would signal it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    if Path("/proc").is_dir():
        return process_start_time(pid) is not None  # None for a zombie: it has exited
    return True  # pragma: no cover - no /proc: the pid exists


# ------------------------------------------------------------------------------------------------
# locks
# ------------------------------------------------------------------------------------------------


def lock_path(run_dir: PathLike) -> Path:
    """``<run dir>.lock``, beside the run directory (an absolute path: one key per lock in this process)."""
    run_dir = Path(run_dir).absolute()
    return run_dir.with_name(run_dir.name + LOCK_SUFFIX)


_held: Dict[str, int] = {}  # lock path -> the descriptor holding its flock, in this process
_held_guard = threading.Lock()
_heartbeat: Optional[threading.Thread] = None


def _owner_text() -> str:
    return f"{os.getpid()}@{platform.node()}"


def lock_owner(run_dir: PathLike) -> str:
    """``<pid>@<host>`` of the lock's holder as written in its file ("" when there is no lock file)."""
    try:
        return lock_path(run_dir).read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _flock_free(path: Path) -> bool:
    """Whether nobody holds the flock of the file at ``path`` (True when it does not exist)."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fd = os.open(path, os.O_RDWR)  # NFS emulates flock with byte-range locks: an exclusive one needs write access
    except FileNotFoundError:
        return True
    except OSError:  # not ours to open: only the contents can say (step 3)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: only the contents can say (step 3)
        return True
    finally:
        os.close(fd)  # closing drops the flock we may have taken
    return True


def _written_by_live_holder(path: Path) -> bool:
    """Step 3 of the protocol: whether a lock file nobody flocks still names a live holder."""
    try:
        owner = path.read_text().strip()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    except UnicodeDecodeError:
        owner, mtime = "", path.stat().st_mtime
    pid_text, _, host = owner.partition("@")
    if not pid_text.isdigit():  # being written right now, or garbage: give a writer a minute
        return time.time() - mtime < 60.0
    if host != platform.node():
        if time.time() - mtime < STALE_AFTER_SECONDS:
            return True
        warnings.warn(
            f"{path}: a lock of pid {pid_text} on host {host!r}, not refreshed for {time.time() - mtime:.0f} s "
            f"(more than {STALE_AFTER_SECONDS:.0f}): taken as abandoned",
            stacklevel=3,
        )
        return False
    pid = int(pid_text)
    if pid == os.getpid() or not _pid_alive(pid):
        return False
    started = process_start_time(pid)
    return started is None or started <= mtime + 2.0  # tolerance: /proc's start time is rounded to ticks


def is_locked(run_dir: PathLike) -> bool:
    """Whether a live process holds the run's lock (this one included)."""
    path = lock_path(run_dir)
    if not path.exists():
        return False
    if str(path) in _held or not _flock_free(path):
        return True
    return _written_by_live_holder(path)


def claim(run_dir: PathLike) -> bool:
    """Take the run's lock for this process (module docstring); False: a live process holds it."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        return _claim_exclusive_create(path)
    for _ in range(10):
        if str(path) in _held:
            return False
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:  # a file system without locks (ENOLCK, EOPNOTSUPP): the contents alone decide (step 3)
            pass
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if not same_file:  # released (deleted) between our open and our flock: try the new file
            os.close(fd)
            continue
        if os.fstat(fd).st_size and _written_by_live_holder(path):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, _owner_text().encode())
        with _held_guard:
            _held[str(path)] = fd
        _start_heartbeat()
        return True
    return False


def _claim_exclusive_create(path: Path) -> bool:  # pragma: no cover - platforms without fcntl
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _written_by_live_holder(path):
                return False
            path.unlink(missing_ok=True)
            continue
        os.write(fd, _owner_text().encode())
        with _held_guard:
            _held[str(path)] = fd
        return True
    return False


def release(run_dir: PathLike) -> None:
    """Give the run's lock back (a no-op when this process does not hold it)."""
    path = lock_path(run_dir)
    with _held_guard:
        fd = _held.pop(str(path), None)
    if fd is None:
        return
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()  # while still holding the flock: see step 4
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def refresh_held_locks() -> None:
    """Touch every lock file this process holds (the heartbeat thread does this every minute)."""
    with _held_guard:
        paths = list(_held)
    for path in paths:
        try:
            os.utime(path)
        except OSError:
            pass


def _heartbeat_loop() -> None:
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        refresh_held_locks()


def _start_heartbeat() -> None:
    global _heartbeat
    with _held_guard:
        if _heartbeat is None or not _heartbeat.is_alive():
            _heartbeat = threading.Thread(target=_heartbeat_loop, name="hybrid-pg-lock-heartbeat", daemon=True)
            _heartbeat.start()
