"""Where arrays live, compared: the one check that keeps outputs off inputs.

A run that writes into an array it reads, or into the directory holding its
intermediates, destroys data it still needs (``reset_outputs`` removes an explicit
output whole before the first block is written). :func:`check_no_alias` refuses such
a run before anything is written.

Two locations *overlap* when one is equal to or lies inside the other. Local paths
are compared after :func:`os.path.realpath` (symbolic links and ``..`` resolved), and,
where both exist, by device and inode too, so a bind mount or a case-insensitive file
system cannot hide an alias. fsspec URLs are compared by the filesystem's canonical
protocol and its normalized path (``s3a://b/k/`` is ``s3://b/k``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from blocklin.errors import OutputAliasError

__all__ = ["Location", "check_no_alias", "location", "overlaps"]


@dataclass(frozen=True)
class Location:
    """A normalized place: ``protocol`` (``"file"`` for local paths) and absolute ``path``."""

    protocol: str
    path: str

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(p for p in self.path.split("/") if p)


def location(url: str | os.PathLike[str]) -> Location:
    """Normalize a local path or an fsspec URL for comparison."""
    text = os.fspath(url)
    if "://" not in text or text.startswith("file://"):
        local = os.path.realpath(os.path.expanduser(text.removeprefix("file://")))
        return Location("file", local.replace(os.sep, "/"))
    from fsspec.core import split_protocol

    proto, rest = split_protocol(text)
    proto = proto or "file"
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(proto)
        canon = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
        path = str(cls._strip_protocol(text))
    except (ImportError, ValueError):  # filesystem not installed: compare as written
        canon, path = proto, rest
    path = posixpath.normpath("/" + path.strip("/"))
    return Location(canon, path)


def _inside(inner: Location, outer: Location) -> bool:
    """Whether ``inner`` is ``outer`` or lies below it, by name."""
    if inner.protocol != outer.protocol:
        return False
    a, b = inner.parts, outer.parts
    return a[: len(b)] == b


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside_by_inode(inner: Location, outer: Location) -> bool:
    """Local paths: does ``inner`` or one of its existing parents share ``outer``'s inode?"""
    if inner.protocol != "file" or outer.protocol != "file":
        return False
    target = _file_id(outer.path)
    if target is None:
        return False
    path = inner.path
    while True:
        if _file_id(path) == target:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def overlaps(a: str | os.PathLike[str] | Location, b: str | os.PathLike[str] | Location) -> bool:
    """Whether ``a`` and ``b`` are the same place, or one lies inside the other.

    Notes
    -----
    A few ``stat`` calls per local pair (one per parent directory); no I/O for URLs.
    """
    la = a if isinstance(a, Location) else location(a)
    lb = b if isinstance(b, Location) else location(b)
    return (_inside(la, lb) or _inside(lb, la)
            or _inside_by_inode(la, lb) or _inside_by_inode(lb, la))


def _inside_either_way(inner: Location, outer: Location) -> bool:
    return _inside(inner, outer) or _inside_by_inode(inner, outer)


def check_no_alias(outputs: Iterable[tuple[str, str]], inputs: Iterable[tuple[str, str]],
                   work_dir: str | None = None) -> None:
    """Refuse outputs that are, contain or lie inside an input or the work directory.

    Parameters
    ----------
    outputs, inputs : iterable of (label, path or URL)
        What a run writes and what it reads; labels name them in the message
        (``"output 'P'"``, ``"input 'X'"``).
    work_dir : str, optional
        The run's directory of intermediates. Outputs may not overlap it; it may not be
        an input or lie inside one. Inputs inside it are allowed: results a compute left
        there are read by later computes.

    Raises
    ------
    OutputAliasError
        Naming both places and how they overlap. Called before anything is written.
    """
    outs = [(label, url, location(url)) for label, url in outputs]
    ins = [(label, url, location(url)) for label, url in inputs]
    if work_dir is not None:
        work = location(work_dir)
        for label, url, loc in ins:
            if _inside_either_way(work, loc):
                raise OutputAliasError(
                    f"the work directory {work_dir} is {_how(work, loc)} {label} ({url}): "
                    "intermediates would be written into it; choose a work directory "
                    "outside every input")
        ins.append(("the work directory", work_dir, work))
    for i, (olabel, ourl, oloc) in enumerate(outs):
        for label, url, loc in [*ins, *outs[:i]]:
            if overlaps(oloc, loc):
                raise OutputAliasError(
                    f"{olabel} ({ourl}) is {_how(oloc, loc)} {label} ({url}); writing it "
                    f"would destroy what the run reads or writes there. Write {olabel} "
                    "somewhere else")


def _how(a: Location, b: Location) -> str:
    if _inside_either_way(a, b) and _inside_either_way(b, a):
        return "the same place as"
    return "inside" if _inside_either_way(a, b) else "a directory containing"
