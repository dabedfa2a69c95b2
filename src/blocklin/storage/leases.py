"""Leases: which entries of a work directory running computes use, and safe removal.

A work directory (``BLOCKLIN_WORK_DIR`` or ``work_dir=``) is shared. Its arrays have
content names, so processes computing overlapping plans use the same arrays, and
``blocklin gc`` may run beside them. Whoever uses entries of it (top-level names:
``a-<hash>`` arrays, an estimator's scratch folder) holds a *lease*,
``<work>/.blocklin/leases/<token>.json``, naming them with its pid, host, start and
last renewal. Whoever removes entries (a compute removing its intermediates,
:func:`blocklin.storage.gc.collect_garbage`) removes only those no live lease names,
and checks and removes while holding the work directory's lock, which taking a lease
holds too: no lease is taken between a remover's check and its removal.

Liveness
    A lease written on this host is live while its process is (pid alive and started
    before the lease). One written on another host cannot be checked from here: it is
    live until :data:`LEASE_TTL` seconds after its last renewal, and its holder renews
    it every :data:`LEASE_RENEW` seconds. A lease that cannot be parsed protects nothing.

The lock
    Local directories: ``flock`` on the directory itself (the kernel releases it when
    its holder dies). fsspec URLs: ``.blocklin/gc.lock`` created exclusively (a
    conditional PUT on S3, fsspec's ``mode="create"`` elsewhere: a check then a write
    on back ends without conditional writes), taken over when its holder on this host
    is gone or it is older than :data:`LOCK_TTL` seconds.

A lease also says which entries its holder *writes*: a compute writing an array (its
plan's intermediates) waits until no other live lease writes it, since a run that
starts clears the records of the arrays it writes.

Taking a lease on a directory that does not exist creates it; releasing the lease
removes the folders it created when nothing else was written in them, so a compute
refused before it runs leaves nothing behind.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from blocklin.errors import LockError
from blocklin.storage.stores import FsspecStore, LocalStore, Store, store_for

__all__ = ["LEASES", "LEASE_RENEW", "LEASE_TTL", "LOCK_KEY", "LOCK_TTL", "TRASH", "Lease",
           "LeaseInfo", "describe_holder", "flush_removals", "leased_names",
           "local_holder_alive", "read_leases", "remove_unused", "scratch_folder",
           "work_lock"]

logger = logging.getLogger(__name__)

#: Folder of the lease files, relative to the work directory.
LEASES = ".blocklin/leases"
#: Where a local work directory's removed arrays wait to be deleted.
TRASH = ".blocklin/trash"
#: The lock object of fsspec work directories (local ones lock the directory itself).
LOCK_KEY = ".blocklin/gc.lock"
#: Seconds a lease written on another host stays live after its last renewal.
LEASE_TTL = 3600.0
#: Seconds between renewals of a held lease.
LEASE_RENEW = 300.0
#: Seconds after which an fsspec lock object is taken over whoever holds it (a lock is
#: held for a lease's write or one removal pass).
LOCK_TTL = 600.0
#: Seconds to wait for the lock before giving up.
LOCK_WAIT = 300.0


@dataclass(frozen=True)
class LeaseInfo:
    """A lease file's contents."""

    token: str
    pid: int
    host: str
    started: float
    renewed: float
    command: str
    names: tuple[str, ...]
    #: The names among ``names`` the holder writes: one writer at a time per array.
    writes: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps({"token": self.token, "pid": self.pid, "host": self.host,
                           "started": self.started, "renewed": self.renewed,
                           "command": self.command, "names": list(self.names),
                           "writes": list(self.writes)}).encode()

    @classmethod
    def parse(cls, data: bytes | None) -> LeaseInfo | None:
        """The lease in ``data``; None when it cannot be parsed."""
        try:
            doc = json.loads(data or b"null")
            names, writes = doc["names"], doc.get("writes", [])
            if not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                       for v in (names, writes)):
                return None
            return cls(str(doc["token"]), int(doc["pid"]), str(doc["host"]),
                       float(doc["started"]), float(doc["renewed"]), str(doc.get("command", "")),
                       tuple(names), tuple(writes))
        except (ValueError, KeyError, TypeError):
            return None

    def alive(self, now: float | None = None) -> bool:
        """Whether the holder may still use what the lease names (see the module docs)."""
        return _holder_alive(self.host, self.pid, self.started,
                             self.renewed, LEASE_TTL, now)

    def describe(self) -> str:
        return describe_holder(self.pid, self.host, self.started, self.command)


def local_holder_alive(host: str, pid: int, started: float) -> bool | None:
    """Whether process ``pid``, which took a lease or lock at ``started``, still runs:
    None when it ran on another host (this one cannot tell)."""
    if host != socket.gethostname():
        return None
    import psutil

    try:
        # A recycled pid belongs to a process younger than the lease or lock.
        return bool(psutil.Process(pid).create_time() <= started + 1.0)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def describe_holder(pid: int, host: str, started: float, command: str) -> str:
    """``pid P on HOST since TIME (COMMAND)``: who holds a lease or lock."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    return f"pid {pid} on {host} since {when} ({command})"


def _holder_alive(host: str, pid: int, started: float, renewed: float, ttl: float,
                  now: float | None) -> bool:
    alive = local_holder_alive(host, pid, started)
    if alive is not None:
        return alive
    return (time.time() if now is None else now) - renewed < ttl


def names_under(store: Store, rel: str) -> list[str]:
    """Names of the entries directly under ``rel`` of ``store`` (empty when none)."""
    if isinstance(store, LocalStore):
        try:
            return sorted(os.listdir(store.root / rel if rel else store.root))
        except (FileNotFoundError, NotADirectoryError):
            return []
    if not isinstance(store, FsspecStore):
        raise TypeError(f"cannot list {store!r}")
    key = f"{store.root}/{rel}".rstrip("/") if rel else store.root
    store.fs.invalidate_cache(key)
    try:
        found = store.fs.ls(key, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted({str(p).rstrip("/").rsplit("/", 1)[-1] for p in found} - {""})


def read_leases(work_dir: str) -> list[tuple[str, LeaseInfo | None]]:
    """Every lease file of ``work_dir``: (its key, the lease or None when unreadable)."""
    store = store_for(work_dir)
    out = []
    for name in names_under(store, LEASES):
        if name.endswith(".json"):
            key = f"{LEASES}/{name}"
            out.append((key, LeaseInfo.parse(store.get(key))))
    return out


def leased_names(work_dir: str, *, exclude: str = "",
                 now: float | None = None) -> dict[str, LeaseInfo]:
    """Entry name -> a live lease naming it (leases with token ``exclude`` left out)."""
    held: dict[str, LeaseInfo] = {}
    for _, info in read_leases(work_dir):
        if info is not None and info.token != exclude and info.alive(now):
            for n in info.names:
                held.setdefault(n, info)
    return held


@contextmanager
def work_lock(work_dir: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the work directory's lock (see the module docs) for the block.

    Raises
    ------
    LockError
        When another holder keeps it for longer than ``wait`` seconds.
    """
    store = store_for(work_dir)
    if isinstance(store, LocalStore):
        with _flock(store.root, wait):
            yield
        return
    if not isinstance(store, FsspecStore):
        raise TypeError(f"cannot lock {store!r}")
    token = uuid.uuid4().hex
    _take_object_lock(store, token, wait)
    try:
        yield
    finally:
        held = store.get(LOCK_KEY)
        if held is not None and _lock_token(held) == token:
            store.delete_prefix(LOCK_KEY)


@contextmanager
def _flock(root: Path, wait: float) -> Iterator[None]:
    import fcntl

    fd = os.open(root, os.O_RDONLY)
    try:
        deadline = time.monotonic() + wait
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() + delay > deadline:
                    raise LockError(f"the work directory {root} stayed locked for {wait:g} s "
                                    "(another process is taking a lease or removing "
                                    "intermediates); try again") from None
                time.sleep(delay)
                delay = min(2 * delay, 0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_doc(token: str) -> bytes:
    return json.dumps({"token": token, "pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.time()}).encode()


def _lock_token(data: bytes) -> str:
    try:
        return str(json.loads(data).get("token", ""))
    except (ValueError, AttributeError):
        return ""


def _take_object_lock(store: FsspecStore, token: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        if store.create_exclusive(LOCK_KEY, _lock_doc(token)):
            return
        seen = store.get(LOCK_KEY)
        try:
            doc = json.loads(seen or b"null")
            alive = _holder_alive(str(doc["host"]), int(doc["pid"]), float(doc["started"]),
                                  float(doc["started"]), LOCK_TTL, None)
        except (ValueError, KeyError, TypeError):
            alive = seen is None  # vanished: try again; unreadable: nobody holds it
        if not alive and seen is not None and store.replace_if(LOCK_KEY, _lock_doc(token), seen):
            return  # the holder is gone: taken over, unless someone else was quicker
        if time.monotonic() + delay > deadline:
            raise LockError(f"{store.url}/{LOCK_KEY} stayed locked for {wait:g} s (another "
                            "process is taking a lease or removing intermediates); if its "
                            "holder is gone, delete that object")
        time.sleep(delay)
        delay = min(2 * delay, 0.2)


def _make_dirs(root: Path) -> list[Path]:
    """Create ``root`` and missing parents; the ones created, deepest first."""
    created = []
    path = root
    while not path.exists():
        created.append(path)
        if path.parent == path:
            break
        path = path.parent
    root.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(dirs: Iterable[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # not empty (something else was written there) or gone
            return


def remove_unused(work_dir: str, names: Collection[str], *, exclude: str = "") -> list[str]:
    """Remove the entries ``names`` of ``work_dir`` that no live lease names.

    Leases with token ``exclude`` (the caller's own) do not count. Returns the names
    removed. The check and the removal hold the work directory's lock.
    """
    if not names:
        return []
    store = store_for(work_dir)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        return []  # removed whole meanwhile (an estimator's scratch folder)
    with work_lock(work_dir):
        return _remove_locked(work_dir, names, exclude)


def _remove_locked(work_dir: str, names: Collection[str], exclude: str) -> list[str]:
    store = store_for(work_dir)
    held = leased_names(work_dir, exclude=exclude)
    gone = [n for n in sorted(set(names)) if n not in held and _safe_name(n)]
    for n in gone:
        if isinstance(store, LocalStore):
            _discard(store.root, n)
        else:  # object stores: one listing and batched deletes per array
            store.delete_prefix(n)
    return gone


def _discard(root: Path, name: str) -> None:
    """Move ``root/name`` out of the work directory's namespace at once, delete it later.

    A rename is one cheap call; deleting a tree costs one ``rmdir`` per folder, which
    some file systems make slow (2 ms each measured on a cloud VM's ext4): it runs on a
    background thread, off the compute's path and outside the lock. What a killed
    process leaves in ``.blocklin/trash`` is garbage ``blocklin gc`` removes.
    """
    src = root / name
    trash = root / TRASH
    try:
        trash.mkdir(parents=True, exist_ok=True)
        dst = trash / f"{uuid.uuid4().hex[:12]}-{name}"
        os.rename(src, dst)
    except FileNotFoundError:
        return  # nothing there (a compute that wrote nothing, or removed meanwhile)
    except OSError:
        store_for(str(root)).delete_prefix(name)  # cannot rename: delete it here
        return
    _REAPER.put(dst)


class _Reaper:
    """Deletes discarded trees on one daemon thread; waited for at interpreter exit."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Path] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def put(self, path: Path) -> None:
        with self._start:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="blocklin-trash",
                                                daemon=True)
                self._thread.start()
        self._queue.put(path)

    def _run(self) -> None:
        import shutil

        while True:
            path = self._queue.get()
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        self._queue.join()


_REAPER = _Reaper()
atexit.register(_REAPER.join)


def flush_removals() -> None:
    """Wait until the arrays this process removed from local work directories are
    deleted from disk (they leave the work directory's namespace at once)."""
    _REAPER.join()


def _safe_name(name: str) -> bool:
    """A top-level entry name (never the group's metadata, the lease folder or a path)."""
    return bool(name) and "/" not in name and name not in ("zarr.json", ".blocklin", ".", "..")


class Lease:
    """A lease on entries of a work directory, held for a ``with`` block.

    Parameters
    ----------
    work_dir : str
        A local path or an fsspec URL (its storage options registered).
    names : iterable of str
        Top-level entries the holder uses (array names, scratch folders).
    command : str
        What holds it, for ``blocklin gc``'s report.
    writes : iterable of str, optional
        The entries among ``names`` the holder writes. Taking the lease waits while
        another live lease writes one of them: two computes writing the same
        content-named array (the same plan, or plans sharing stages) take turns, as
        the later one's reset would otherwise clear the earlier one's records.
    """

    def __init__(self, work_dir: str, names: Iterable[str], command: str = "compute",
                 writes: Iterable[str] = ()) -> None:
        self.work_dir = work_dir
        self.store = store_for(work_dir)
        self.writes = tuple(sorted(set(writes)))
        self.names = tuple(sorted(set(names) | set(self.writes)))
        self.command = command
        self.token = uuid.uuid4().hex
        self.key = f"{LEASES}/{self.token}.json"
        self.started = 0.0
        self._created: list[Path] = []
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.held = False

    def _info(self) -> LeaseInfo:
        return LeaseInfo(self.token, os.getpid(), socket.gethostname(), self.started,
                         time.time(), self.command, self.names, self.writes)

    def acquire(self) -> None:
        """Write the lease (holding the work directory's lock) and start renewing it."""
        if isinstance(self.store, LocalStore):
            self._created = _make_dirs(self.store.root)
        self.started = time.time()
        try:
            self._write_when_free()
        except BaseException:
            _remove_empty(self._created)
            raise
        self.held = True
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name=f"blocklin-lease-{self.token[:8]}")
        self._renewer.start()

    def _write_when_free(self) -> None:
        """Write the lease once no other live lease writes what this one writes."""
        delay, told = 0.01, False
        while True:
            with work_lock(self.work_dir):
                busy = self._writer() if self.writes else None
                if busy is None:
                    self.store.put(self.key, self._info().to_json())
                    return
            if not told:
                logger.info("waiting for %s, which writes the same arrays in %s", busy.describe(),
                            self.work_dir)
                told = True
            time.sleep(delay)
            delay = min(2 * delay, 0.5)

    def _writer(self) -> LeaseInfo | None:
        """Another live lease writing one of this lease's writes, if any."""
        mine = set(self.writes)
        now = time.time()
        for _, info in read_leases(self.work_dir):
            if (info is not None and info.token != self.token and mine.intersection(info.writes)
                    and info.alive(now)):
                return info
        return None

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW):
            try:
                self.store.put(self.key, self._info().to_json())
            except Exception:  # a failed renewal is retried at the next one
                continue

    def release(self, remove: Collection[str] = ()) -> list[str]:
        """Remove ``remove`` (those no other live lease names), then the lease itself.

        Returns the names removed. Folders ``acquire`` created are removed when nothing
        else was written in them.
        """
        if not self.held:
            return []
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)
        self.held = False
        with work_lock(self.work_dir):
            gone = _remove_locked(self.work_dir, remove, self.token) if remove else []
            self.store.delete_prefix(self.key)
            if isinstance(self.store, LocalStore) and self._created:
                # A work dir this lease created goes again when nothing else was written
                # there (a compute refused before it ran). Under the lock: a lease being
                # taken recreates these folders first.
                root = self.store.root
                _remove_empty([root / LEASES, root / ".blocklin"])
        _remove_empty(self._created)
        return gone

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, tp: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def scratch_folder(work_dir: str | os.PathLike[str], prefix: str) -> Iterator[str]:
    """A new folder ``<work_dir>/<prefix><random>`` (local), leased while the block runs
    and removed after it, even when it raises.

    Estimators keep temporary copies of in-memory inputs and their passes' arrays
    there; the lease keeps ``blocklin gc`` off it for the whole fit, between passes
    too. A killed process leaves the folder behind, and gc removes it. A work
    directory this call created is removed with it when nothing else was written there.
    """
    import shutil

    base = Path(work_dir).expanduser()
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    lease = Lease(str(base), [name], command=f"scratch folder {name}", writes=[name])
    lease.acquire()
    path = base / name
    try:
        path.mkdir()
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
        lease.release()
