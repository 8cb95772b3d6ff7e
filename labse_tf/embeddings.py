"""The sharded embedding directory that labse_tf.embed writes and labse_tf.mine reads.

    DIR/index.json               what the directory holds (below), rewritten after each shard
    DIR/shard-00000.npy          float16 or float32 `[rows, dim]`: unit-norm embeddings
    DIR/shard-00000.lines.npy    int64 `[rows]`: the 1-based line number of each row
    DIR/shard-00001.npy ...

One row per non-blank line of the source, in file order (blank lines have none; repeated
lines each have one). The `.npy` files are NumPy's format (`np.load`). index.json:

    {"format": "labse_tf.embed/1",
     "source": the text file, as given; "model": the checkpoint or SavedModel embedded with,
     "dim": 768, "dtype": "float16", "shard_size": rows per shard (the last may have fewer),
     "shards": [{"embeddings": "shard-00000.npy", "lines": "shard-00000.lines.npy",
                 "rows": 50000, "first_line": 1, "last_line": 50211}, ...],
     "rows": rows in all shards, "lines_read": source lines the shards cover,
     "complete": true once the whole source is embedded}

A shard counts once index.json lists it: its files are written first, then index.json is
replaced atomically, so a run killed at any point leaves a directory whose listed shards
are whole, and a rerun continues after the last of them (overwriting any unlisted files).
"""

import dataclasses
import io
from typing import Iterator

import numpy as np

from labse_tf import files, index

__all__ = ["DTYPES", "FORMAT", "INDEX_FILE", "EmbeddingDir", "ShardWriter"]

FORMAT = "labse_tf.embed/1"
INDEX_FILE = "index.json"
DTYPES = ("float16", "float32")
# What a rerun must share with the run that started a directory.
_SETTINGS = ("source", "model", "dim", "dtype", "shard_size")


def _save_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    files.write_bytes(path, buffer.getvalue())


def _load_npy(path: str) -> np.ndarray:
    if not files.exists(path):
        raise files.FileError(f"{path}: no such file (listed in {INDEX_FILE})")
    with files.open_file(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def _read_meta(path: str) -> dict:
    """index.json of an embedding directory, checked to be one."""
    index_file = files.join(path, INDEX_FILE)
    if not files.exists(index_file):
        raise files.FileError(f"{path}: no {INDEX_FILE} (not written by labse_tf.embed?)")
    meta = files.read_json(index_file)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{index_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


class EmbeddingDir:
    """A directory written by labse_tf.embed, read a shard at a time.

    Attributes:
      path: str. The directory.
      source, model: str. What was embedded, and with what.
      dim: int. Embedding width.
      dtype: str. One of DTYPES.
      shards: list of dict. index.json's shard entries.
      rows: int. Rows in all shards.
      complete: bool. Whether the whole source was embedded.
    """

    def __init__(self, path: str):
        meta = _read_meta(path)
        self.path = path
        self.source, self.model = meta["source"], meta["model"]
        self.dim, self.dtype = meta["dim"], meta["dtype"]
        self.shards, self.rows, self.complete = meta["shards"], meta["rows"], meta["complete"]

    def line_numbers(self) -> np.ndarray:
        """int64 `[rows]`: each row's 1-based line in the source."""
        lines = [_load_npy(files.join(self.path, s["lines"])) for s in self.shards]
        return np.concatenate(lines) if lines else np.zeros([0], np.int64)

    def _embeddings(self) -> Iterator[np.ndarray]:
        for shard in self.shards:
            path = files.join(self.path, shard["embeddings"])
            array = _load_npy(path)
            if array.shape != (shard["rows"], self.dim):
                raise ValueError(f"{path}: shape {array.shape}, but {INDEX_FILE} lists "
                                 f"({shard['rows']}, {self.dim})")
            yield array

    def vectors(self, keep: np.ndarray | None = None) -> index.Vectors:
        """The embeddings as index.Vectors (float32), optionally only some rows.

        Args:
          keep: optional bool `[rows]`. The rows to keep.
        """
        if keep is None:
            return index.Vectors(self._embeddings, self.rows, self.dim)
        keep = np.asarray(keep, bool)
        if keep.shape != (self.rows,):
            raise ValueError(f"{self.path}: keep has shape {keep.shape}, expected ({self.rows},)")
        bounds = np.cumsum([0] + [s["rows"] for s in self.shards])

        def shards():
            for array, start, stop in zip(self._embeddings(), bounds[:-1], bounds[1:]):
                yield array[keep[start:stop]]

        return index.Vectors(shards, int(keep.sum()), self.dim)


@dataclasses.dataclass
class ShardWriter:
    """Writes (or continues) an embedding directory a shard at a time.

    A new directory is started, or an existing one continued, by `ShardWriter.open`; its
    `meta` is index.json's content as last written.
    """

    path: str
    meta: dict

    @classmethod
    def open(cls, path: str, *, source: str, model: str, dim: int, dtype: str,
             shard_size: int) -> "ShardWriter":
        """Starts a directory, or continues one started with the same settings.

        Raises:
          ValueError: the directory was started with other settings, or the dtype is not
            one of DTYPES.
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        settings = {"source": source, "model": model, "dim": dim, "dtype": dtype,
                    "shard_size": shard_size}
        index_file = files.join(path, INDEX_FILE)
        if not files.exists(index_file):
            files.makedirs(path)
            return cls(path, {"format": FORMAT, **settings, "shards": [], "rows": 0,
                              "lines_read": 0, "complete": False})
        meta = _read_meta(path)
        for key in _SETTINGS:
            if meta[key] != settings[key]:
                raise ValueError(f"{index_file}: started with {key}={meta[key]!r}, this run has "
                                 f"{key}={settings[key]!r}; rerun with the same settings to "
                                 "continue it, or choose another output directory")
        return cls(path, meta)

    def add(self, embeddings: np.ndarray, lines: np.ndarray, lines_read: int) -> None:
        """Writes one shard, then lists it in index.json.

        Args:
          embeddings: float `[rows, dim]`. Stored as the directory's dtype.
          lines: int `[rows]`. Each row's 1-based source line.
          lines_read: int. Source lines covered once this shard is written.
        """
        number = len(self.meta["shards"])
        entry = {"embeddings": f"shard-{number:05d}.npy", "lines": f"shard-{number:05d}.lines.npy",
                 "rows": len(lines), "first_line": int(lines[0]), "last_line": int(lines[-1])}
        _save_npy(files.join(self.path, entry["embeddings"]),
                  np.asarray(embeddings, self.meta["dtype"]))
        _save_npy(files.join(self.path, entry["lines"]), np.asarray(lines, np.int64))
        self.meta["shards"].append(entry)
        self.meta["rows"] += len(lines)
        self.meta["lines_read"] = lines_read
        files.write_json(files.join(self.path, INDEX_FILE), self.meta)

    def finish(self, lines_read: int) -> None:
        """Marks the directory complete: the source has `lines_read` lines in all."""
        self.meta.update(lines_read=lines_read, complete=True)
        files.write_json(files.join(self.path, INDEX_FILE), self.meta)
