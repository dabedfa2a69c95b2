"""A small key/value interface over the places arrays live.

Two implementations: :class:`LocalStore` for plain directories (atomic writes by
rename, reads straight into reusable buffers) and :class:`FsspecStore` for any
fsspec URL (``s3://``, ``memory://``, ``gs://``...). Keys are ``/``-separated
paths relative to the array root, exactly as zarr v3 lays them out.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import fsspec
    from zarr.abc.store import Store as ZarrStore

__all__ = ["FsspecStore", "LocalStore", "Store", "join_url", "store_for"]


class Store(ABC):
    """Byte store rooted at one array or group.

    Attributes
    ----------
    url : str
        Location of the root, a local path or an fsspec URL.
    read_only : bool
        Whether writes are refused.
    """

    url: str
    read_only: bool = False

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """Return the bytes under ``key``, or None when absent."""

    def read_into(self, key: str, buf: bytearray | memoryview) -> memoryview | None:
        """Read ``key``, into ``buf`` when it fits; return a view of the bytes, None if absent."""
        data = self.get(key)
        return None if data is None else memoryview(data)

    @abstractmethod
    def get_tail(self, key: str, n: int) -> bytes | None:
        """Return the last ``n`` bytes under ``key`` (for checksum trailers)."""

    @abstractmethod
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` under ``key`` so that readers see all of it or none of it."""

    def put_parts(self, key: str, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """:meth:`put` of the concatenated ``parts`` (stores that can write them one
        after the other skip the joined copy)."""
        self.put(key, b"".join(parts))

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds data."""

    @abstractmethod
    def stat(self, key: str) -> str | None:
        """A token that changes whenever ``key`` is rewritten (size with modification
        time, or an object store's ETag); None when ``key`` is absent."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys directly or indirectly under ``prefix`` (relative to the root)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix`` ("" removes the whole root)."""

    @abstractmethod
    def zarr_store(self) -> ZarrStore:
        """The equivalent zarr store, for metadata and the generic read path."""

    def child(self, name: str) -> Store:
        """The store rooted at ``name`` under this one."""
        return store_for(join_url(self.url, name), read_only=self.read_only)

    def _check_writable(self) -> None:
        if self.read_only:
            from blocklin.errors import InputValueError

            raise InputValueError(f"store {self.url} was opened read-only")


class LocalStore(Store):
    """A directory on a local (or network-mounted) file system."""

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.root = Path(path).expanduser().absolute()
        self.url = str(self.root)
        self.read_only = read_only

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def read_into(self, key: str, buf: bytearray | memoryview) -> memoryview | None:
        # Reading into a reused buffer avoids the page faults of a fresh allocation,
        # which cost more than the read itself (measured 1.2 vs 4.6 GB/s per thread).
        try:
            fh = open(self._path(key), "rb", buffering=0)  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size > len(buf):
                return memoryview(fh.read())
            view = memoryview(buf)[:size]
            got = 0
            while got < size:
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
            return view[:got]

    def get_tail(self, key: str, n: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - n))
                return fh.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.put_parts(key, [data])

    def put_parts(self, key: str, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        self._check_writable()
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                for part in parts:
                    fh.write(part)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> str | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for f in files:
                if f.endswith(".tmp") and f.startswith("."):
                    continue
                out.append(os.path.relpath(os.path.join(dirpath, f), self.root).replace(os.sep, "/"))
        return sorted(out)

    def delete_prefix(self, prefix: str) -> None:
        import shutil

        self._check_writable()
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def zarr_store(self) -> ZarrStore:
        import zarr.storage

        return zarr.storage.LocalStore(self.root, read_only=self.read_only)


class FsspecStore(Store):
    """Any fsspec URL; writes are single-object puts, which object stores make atomic."""

    def __init__(self, url: str, read_only: bool = False) -> None:
        self.url = url.rstrip("/")
        self.read_only = read_only
        self.fs, self.root = _filesystem(self.url)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def get(self, key: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data

    def get_tail(self, key: str, n: int) -> bytes | None:
        try:
            size = self.fs.size(self._path(key))
            data: bytes = self.fs.cat_file(self._path(key), start=max(0, size - n))
        except (FileNotFoundError, IsADirectoryError):
            return None
        return data

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._check_writable()
        self.fs.pipe_file(self._path(key), bytes(data))

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def stat(self, key: str) -> str | None:
        try:
            info = self.fs.info(self._path(key))
        except (FileNotFoundError, IsADirectoryError):
            return None
        tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")
        return f"{info.get('size')}:{tag}"

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        return sorted(p[len(root):] if p.startswith(root) else p.lstrip("/")[len(root.lstrip("/")):]
                      for p in found)

    def delete_prefix(self, prefix: str) -> None:
        self._check_writable()
        path = self._path(prefix)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def zarr_store(self) -> ZarrStore:
        import zarr.storage

        return zarr.storage.FsspecStore.from_url(self.url, read_only=self.read_only)


_fs_lock = threading.Lock()


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    import fsspec.core

    with _fs_lock:
        fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


@lru_cache(maxsize=256)
def _cached_store(url: str, read_only: bool) -> Store:
    if _is_local(url):
        return LocalStore(url.removeprefix("file://"), read_only=read_only)
    return FsspecStore(url, read_only=read_only)


def store_for(url: str | os.PathLike[str], read_only: bool = False) -> Store:
    """Return the store for a local path or an fsspec URL (cached per process).

    Raises
    ------
    InputDtypeError
        If ``url`` is not a string or path.
    """
    from blocklin.errors import InputDtypeError

    if not isinstance(url, str | os.PathLike):
        raise InputDtypeError(f"a store location must be a path or URL string; got {url!r}")
    text = os.fspath(url)
    if _is_local(text):
        text = str(Path(text.removeprefix("file://")).expanduser().absolute())
    return _cached_store(text.rstrip("/") or "/", read_only)


def join_url(base: str, name: str) -> str:
    """Join a child name onto a path or URL."""
    return f"{base.rstrip('/')}/{name.strip('/')}"


def unique_suffix() -> str:
    """A short random suffix for temporary names (never used for content names)."""
    return uuid.uuid4().hex[:12]
