"""A filesystem that is a local path, a shared mount, or an object-store URI (pyarrow.fs)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs


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
