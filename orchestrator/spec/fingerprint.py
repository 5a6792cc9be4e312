"""Content fingerprints of files a user brings (data, model pairs): artifact keys include them,
so a changed file is never mistaken for the one whose results are stored."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def file_fingerprint(path: str) -> str:
    """sha256 of a local file's bytes (cached by size and mtime); size and mtime of a URI's."""
    if "://" in path:
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        info = fs.get_file_info(inner)
        return f"{path}:{info.size}:{info.mtime_ns}"
    stat = Path(path).stat()
    return _local_digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _local_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]
