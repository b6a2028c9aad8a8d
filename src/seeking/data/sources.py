"""A folder or a tar archive seen the same way: relative POSIX paths and a function that reads one.

Hidden entries (a name starting with ".", such as macOS ``._x.jpg`` files) are left out.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from seeking.errors import DataError

# a folder is listed this deep: top/train/<class>/<file> is the deepest layout we read
MAX_DEPTH = 4


@dataclass(frozen=True)
class Tree:
    source: Path  # the folder or archive, for messages
    dirs: frozenset[str]  # every folder, including those only implied by a file's path
    files: tuple[str, ...]  # sorted, so that every listing order is deterministic
    read: Callable[[str], bytes]

    def where(self, rel: str) -> str:
        """A readable location: archive members read as paths under the archive."""
        return f"{self.source}/{rel}" if rel else str(self.source)


def folder_tree(root: Path) -> tuple[Tree, str]:
    """The folder's tree and a stamp of every file's path, size and mtime (the cache key)."""
    dirs, files, stamp = set(), [], hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix, depth = ("", 0) if rel == "." else (f"{rel}/", rel.count("/") + 1)
        keep = depth < MAX_DEPTH - 1  # files at most MAX_DEPTH names deep
        dirnames[:] = sorted(d for d in dirnames if keep and not d.startswith("."))
        dirs.update(prefix + d for d in dirnames)
        for name in sorted(filenames):
            if not name.startswith("."):
                files.append(prefix + name)
                st = os.stat(os.path.join(dirpath, name))
                stamp.update(f"{files[-1]}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    stamp.update("\n".join(sorted(dirs)).encode())

    def read(rel: str) -> bytes:
        try:
            return (root / rel).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {root / rel}: {e.strerror}; check its permissions") from e

    return Tree(root, frozenset(dirs), tuple(sorted(files)), read), stamp.hexdigest()


def archive_tree(archive: Path) -> Tree:
    """Every regular file of a tar archive (any compression), read in one pass in stream order."""
    dirs, files = set(), {}
    try:
        with tarfile.open(archive, "r|*") as tar:  # stream mode: one sequential pass, no seeks
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not parts or any(p.startswith(".") for p in parts):
                    continue
                rel = "/".join(parts)
                if member.isdir():
                    dirs.add(rel)
                elif member.isfile():
                    files[rel] = tar.extractfile(member).read()
                    dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"cannot read {archive} as a tar archive ({e}): give a folder, or an intact .tar.gz of "
            "a CIFAR python folder or a class-folder tree (download it again if it is damaged)"
        ) from e
    return Tree(archive, frozenset(dirs), tuple(sorted(files)), files.__getitem__)
