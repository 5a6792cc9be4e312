"""A filesystem that is a local path, a shared mount, or an object-store URI (pyarrow.fs)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = ["Location", "OutputError", "check_writable"]

PROBE_PREFIX = ".unlearn-audit-probe-"


class OutputError(ValueError):
    """An output location that cannot be written; the message says why, in one line."""


class Location:
    """A root directory on some filesystem, with atomic whole-file writes."""

    def __init__(self, root: str | os.PathLike) -> None:
        text = str(root)
        if "://" in text:
            self.fs, self.root = pafs.FileSystem.from_uri(text)
            self.uri = text
        else:
            path = Path(text).expanduser().resolve()
            self.fs, self.root = pafs.LocalFileSystem(), str(path)
            self.uri = str(path)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def child_uri(self, *parts: str) -> str:
        """The URI (or local path) of ``root/parts``; an object store's ``?query`` stays last."""
        base, sep, query = self.uri.partition("?") if not self.local else (self.uri, "", "")
        return "/".join([base.rstrip("/"), *parts]) + sep + query

    def split(self) -> tuple[str, str]:
        """(the parent's URI or path, the last name): ``show`` climbs from a table folder."""
        if "://" not in self.uri:
            path = Path(self.uri)
            return str(path.parent), path.name
        base, sep, query = self.uri.partition("?")
        parent, _, name = base.rstrip("/").rpartition("/")
        return parent + sep + query, name

    def kind(self, *parts: str) -> str:
        """``missing``, ``file`` or ``dir`` (object stores: a prefix holding objects is a dir)."""
        kind = self.fs.get_file_info(self.path(*parts)).type
        if kind == pafs.FileType.NotFound:
            return "missing"
        return "dir" if kind == pafs.FileType.Directory else "file"

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write a whole file so that readers see all of it or nothing.

        Locally: a hidden temporary file in the same directory, then an atomic rename. Object
        stores publish an object only when its upload completes, so a direct write is atomic.
        """
        final = self.path(*parts)
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(final) as out:
                out.write(data)
            return final
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return final

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_file(self.path(*parts)) as fh:
            return fh.read()

    def list_files(self, *parts: str, suffix: str = "") -> list[str]:
        base = self.path(*parts)
        info = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return sorted(i.path for i in info if i.type == pafs.FileType.File
                      and i.path.endswith(suffix) and not i.base_name.startswith("."))

    def list_dirs(self, *parts: str) -> list[str]:
        base = self.path(*parts)
        info = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.Directory
                      and not i.base_name.startswith((".", "_")))


def unreadable_file(err: BaseException) -> bool:
    """Whether pyarrow's error says the file itself is not (or no longer) what it should be:
    ArrowInvalid, or an OSError without an errno ("Couldn't deserialize thrift"). A
    permission or I/O error of the system (an errno) is not the file's fault."""
    return (isinstance(err, (pa.ArrowException, OSError))
            and getattr(err, "errno", None) is None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_writable(target: str | os.PathLike, *parts: str, probe: bool = True) -> None:
    """Raise :class:`OutputError` unless files can be written under ``target/parts``.

    Called before any work, so that a bad ``--results`` costs nothing: a probe file is created
    and deleted in the deepest folder of that path that already exists (nothing else is made),
    or, on an object store, a probe object is written and deleted under ``target/parts``.
    ``probe=False`` only checks that a local path is not (under) a file.
    """
    try:
        loc = Location(target)
    except (OSError, ValueError, pa.ArrowException) as err:  # unknown scheme, bad URI
        raise OutputError(f"not a usable location: {_first_line(err)}") from None
    if loc.local:
        _check_local(Path(loc.root), Path(loc.root).joinpath(*parts), probe)
        return
    if not probe:
        return
    try:
        _probe_store(loc, parts)
    except (OSError, pa.ArrowException) as err:
        raise OutputError(f"cannot write there: {_first_line(err)}") from None


def _probe_store(loc: Location, parts: tuple[str, ...]) -> None:
    folder = loc.path(*parts)
    probe = f"{folder}/{PROBE_PREFIX}{uuid.uuid4().hex}"

    def write() -> None:
        with loc.fs.open_output_stream(probe) as out:
            out.write(b"probe")

    made = None
    try:
        try:
            write()  # S3 and the like: no folders needed, nothing else is created
        except FileNotFoundError:
            # A store with real folders: make them for the probe, and remove them after.
            made = next((p for p in _prefixes(loc.root, parts)
                         if loc.fs.get_file_info(p).type == pafs.FileType.NotFound), None)
            loc.fs.create_dir(folder, recursive=True)
            write()
        loc.fs.delete_file(probe)
    finally:
        if made is not None:
            try:
                loc.fs.delete_dir(made)
            except OSError:
                pass  # the probe is the finding; a leftover empty folder is harmless


def _prefixes(root: str, parts: tuple[str, ...]) -> list[str]:
    """``root`` and each deeper folder down to ``root/parts``, shallowest first."""
    names = [n for n in root.split("/") if n] + list(parts)
    lead = "/" if root.startswith("/") else ""
    return [lead + "/".join(names[:i]) for i in range(1, len(names) + 1)]


def _check_local(root: Path, target: Path, probe: bool) -> None:
    node = target
    while not node.exists():  # the filesystem root always exists
        node = node.parent
    if not node.is_dir():
        if node == root:
            raise OutputError("is a file, not a folder")
        raise OutputError(f"{node} is a file, so no folder can be made under it")
    if not probe:
        return
    probe_file = node / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        fd = os.open(probe_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.remove(probe_file)
    except OSError as err:
        where = "" if node == root else f"{node} is "
        raise OutputError(f"{where}not writable ({err.strerror or _first_line(err)})") from None
