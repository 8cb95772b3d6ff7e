"""The file layer: every path a user gives goes through here, on any filesystem TF reaches.

Paths are URLs (`gs://bucket/run`, `ram://x` in tests) or local paths, and keep their
form: nothing here turns a URL into a local path, and `absolute` leaves URLs alone. All
I/O is `tf.io.gfile`, so what works on a local disk works on GCS. Joining is plain `/`
joining (object stores have no other separator).
"""

import contextlib
import gzip
import io
import json
import os
import posixpath
import uuid
from typing import IO, Iterable, Iterator

import tensorflow as tf

__all__ = ["FileError", "absolute", "basename", "copy", "dirname", "exists", "expand",
           "glob", "has_magic", "is_url", "isdir", "join", "listdir", "makedirs", "open_file",
           "read_json", "read_text", "record_writer", "remove", "rename", "rmtree", "size",
           "write_bytes", "write_json", "write_text"]


class FileError(ValueError):
    """A path cannot be used: missing, a directory where a file is expected, no match."""


def is_url(path: str) -> bool:
    """Whether `path` names a filesystem by scheme (`gs://`, `ram://`, ...)."""
    return "://" in path


def join(*parts: str) -> str:
    return posixpath.join(*parts) if is_url(parts[0]) else os.path.join(*parts)


def dirname(path: str) -> str:
    if is_url(path):
        scheme, rest = path.split("://", 1)
        head = posixpath.dirname(rest.rstrip("/"))
        return f"{scheme}://{head}"
    return os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def absolute(path: str) -> str:
    """A local path made absolute (for records such as summary.json); a URL as it is."""
    return path if is_url(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return tf.io.gfile.exists(path)


def isdir(path: str) -> bool:
    return tf.io.gfile.isdir(path)


def size(path: str) -> int:
    return tf.io.gfile.stat(path).length


def listdir(path: str) -> list[str]:
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def makedirs(path: str) -> None:
    if path:
        tf.io.gfile.makedirs(path)


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob (`*`, `?`, `[...]`) on any filesystem."""
    return sorted(tf.io.gfile.glob(pattern))


def expand(patterns: Iterable[str], *, what: str = "input") -> list[str]:
    """Files named by paths and globs, in order, each checked to be a readable file.

    Raises:
      FileError: a path does not exist or is a directory, a glob matches no file, or
        nothing was given.
    """
    paths = []
    for pattern in patterns:
        matches = glob(pattern) if has_magic(pattern) else [pattern]
        matches = [m for m in matches if not (has_magic(pattern) and isdir(m))]
        if not matches:
            raise FileError(f"{pattern}: the pattern matches no file")
        for path in matches:
            if isdir(path):
                raise FileError(f"{path}: is a directory, expected a file")
            if not exists(path):
                raise FileError(f"{path}: no such file")
        paths += matches
    if not paths:
        raise FileError(f"no {what} files given")
    return paths


def _gfile(path: str, mode: str) -> tf.io.gfile.GFile:
    """`tf.io.gfile.GFile`, which on `ram://` (TF 2.20) appends to an existing file opened
    for writing instead of replacing it: there the old file is removed first."""
    if mode.startswith("w") and is_url(path):
        _clear(path)
    return tf.io.gfile.GFile(path, mode)


@contextlib.contextmanager
def open_file(path: str, mode: str = "r") -> Iterator[IO]:
    """Opens a file on any filesystem; `.gz` files are (de)compressed on the way.

    Text modes read and write UTF-8. Writing a local file or a single object store object
    is atomic only through `write_text`/`write_json`; this is for streams.
    """
    binary = "b" in mode
    if not path.endswith(".gz"):  # GFile reads and writes UTF-8 text itself
        with _gfile(path, mode.replace("t", "")) as f:
            yield f
        return
    with _gfile(path, mode[0] + "b") as raw:
        with gzip.GzipFile(fileobj=raw, mode=mode[0] + "b") as stream:
            if binary:
                yield stream
            else:
                text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
                try:
                    yield text
                finally:
                    text.flush()
                    text.detach()


def record_writer(path: str) -> tf.io.TFRecordWriter:
    """An uncompressed TFRecord file for writing on any filesystem (replacing it)."""
    makedirs(dirname(path))
    if is_url(path):
        _clear(path)
    return tf.io.TFRecordWriter(path)


def read_text(path: str) -> str:
    with open_file(path, "rb") as f:
        return f.read().decode("utf-8")


def write_text(path: str, text: str) -> str:
    """Writes `text` as UTF-8 so that a reader never sees half of it; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> str:
    """Writes `data` so that a reader never sees half of it; returns the path.

    Locally: a uniquely named temporary file renamed over the target (processes of one
    run may race here). Object stores make an object visible only when its upload
    completes, so a direct write is already all-or-nothing there (and renames are
    copies, which would be slower and no safer).
    """
    makedirs(dirname(path))
    if is_url(path):
        with _gfile(path, "wb") as f:
            f.write(data)
        return path
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def read_json(path: str):
    return json.loads(read_text(path))


def write_json(path: str, value) -> str:
    return write_text(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def _clear(url: str) -> None:
    """Removes an object about to be rewritten: `ram://` appends to an existing file
    instead of replacing it (object stores replace; removing first is harmless there)."""
    if tf.io.gfile.exists(url) and not tf.io.gfile.isdir(url):
        tf.io.gfile.remove(url)


def copy(src: str, dst: str) -> str:
    makedirs(dirname(dst))
    if is_url(dst):
        _clear(dst)
    tf.io.gfile.copy(src, dst, overwrite=True)
    return dst


def rename(src: str, dst: str) -> None:
    """Renames a file or directory: atomic on a local disk; object stores copy each object."""
    tf.io.gfile.rename(src, dst)


def remove(path: str) -> None:
    if exists(path):
        tf.io.gfile.remove(path)


def rmtree(path: str) -> None:
    """Deletes a directory tree; a missing one is fine.

    Subdirectories go first, in reverse name order: TF's ram:// lists `assets.extra/x` in
    `assets/` too (as `.extra`, a name it then cannot delete) until `assets.extra` is gone.
    """
    if not exists(path):
        return
    for name in reversed(listdir(path)):
        if isdir(join(path, name)):
            tf.io.gfile.rmtree(join(path, name))
    tf.io.gfile.rmtree(path)
