"""What a corpus holds: the one line validator, file readers, and the corpus manifest.

A corpus is a list of files of translation pairs: TSV (`src<TAB>tgt`, the language being
the file name up to its first dot, or `lang<TAB>src<TAB>tgt`), plain or `.gz`, or TFRecord
files of tf.train.Example records with string features `src_raw`, `tgt_raw` and optional
`lang`. Lines are validated by TensorFlow ops on batches of lines (`parse_lines`), the one
validator that training, the manifest pass and `labse_tf.prepare` all run.

The manifest (`manifest.json`) is what one streaming pass over the files found: for each
file its size, valid pairs per language and malformed lines (the first few with `line:
why`), and the totals. Training mixes languages from its counts without reading the data
again, and a resumed run checks that its files are still the ones counted:

    {"version": 1, "pairs": 1100000, "malformed": 12,
     "languages": {"deu": 5000, ...},
     "files": [{"path": "gs://b/deu.tsv.gz", "bytes": 81234, "pairs": {"deu": 5000},
                "malformed": 2, "malformed_examples": ["17: empty source field", ...]}, ...]}

Paths in the manifest are as given (URLs stay URLs); a manifest written by `prepare`
beside its shards names them relative to its own directory, and adds what it read and
dropped (`Preparation`: its input files, counted as above, and the pairs it dropped):

    "preparation": {"inputs": [{"path": "gs://b/raw/deu.tsv.gz", ...}, ...],
                    "excluded": {"deu": 3, ...}, "duplicates": {"deu": 120, ...},
                    "exclude_files": ["gs://b/tatoeba.deu"]}
"""

import collections
import dataclasses
import time
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from labse_tf import files
from labse_tf.rundir import MANIFEST_FILE  # a run's, and a prepared corpus's

__all__ = ["DataError", "FileEntry", "MANIFEST_FILE", "MANIFEST_VERSION", "Manifest",
           "Preparation", "build_manifest", "example_bytes", "file_kind", "file_language",
           "file_table", "parse_examples", "parse_lines", "parsed_file", "parsed_files",
           "read_manifest", "resolve_inputs", "unreadable", "write_manifest"]

MANIFEST_VERSION = 1
_TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
# Lines parsed per TF call: validation is vectorised over a chunk, not one op per line.
PARSE_BATCH = 4096
# Python's str.strip() whitespace in RE2 syntax: ASCII space, \x0b-\x0d, \x1c-\x1f, \x85,
# and Unicode separators (NBSP, U+2000..U+200A, U+3000, ...).
_SPACE = r"[\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}]"


class DataError(ValueError):
    """Input data cannot be used: missing files, or nothing valid in them."""


def file_kind(path: str) -> str:
    """`tfrecord`, `gzip` (TSV) or `text` (TSV), from the file name."""
    if path.endswith(_TFRECORD_SUFFIXES):
        return "tfrecord"
    return "gzip" if path.endswith(".gz") else "text"


def file_language(path: str) -> str:
    """Language of a file without a language column: its name up to the first dot."""
    return files.basename(path).split(".")[0]


def _strip(x: tf.Tensor) -> tf.Tensor:
    return tf.strings.regex_replace(x, f"^{_SPACE}+|{_SPACE}+$", "")


def _utf8_error(text: tf.Tensor, what: str) -> tf.Tensor:
    """Per string: "" if valid UTF-8, else `{what}invalid UTF-8 at byte N`.

    The byte is that of the first invalid sequence: the first U+FFFD of the repaired
    decoding whose bytes are not a real U+FFFD.
    """
    repaired = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                            replacement_char=0xFFFD)
    bad = tf.not_equal(repaired, text)
    bad_text = tf.boolean_mask(text, bad)
    chars, offsets = tf.strings.unicode_decode_with_offsets(
        bad_text, "UTF-8", errors="replace", replacement_char=0xFFFD)
    rows = tf.repeat(bad_text, chars.row_lengths())
    starts = offsets.flat_values
    real = tf.equal(tf.strings.substr(rows, starts, tf.fill(tf.shape(starts), tf.constant(3, tf.int64))),
                    b"\xef\xbf\xbd")
    is_error = tf.logical_and(tf.equal(chars.flat_values, 0xFFFD), tf.logical_not(real))
    big = tf.constant(np.iinfo(np.int64).max, tf.int64)
    first = tf.reduce_min(offsets.with_flat_values(tf.where(is_error, offsets.flat_values, big)),
                          axis=1)
    messages = tf.strings.join([what + "invalid UTF-8 at byte ", tf.strings.as_string(first)])
    return tf.tensor_scatter_nd_update(tf.fill(tf.shape(text), ""),
                                       tf.where(bad), messages)


def _first_error(checks: Sequence[tuple[tf.Tensor, str | tf.Tensor]], shape) -> tf.Tensor:
    """Per row, the message of the first failed check (in order), or ""."""
    error = tf.fill(shape, "")
    for failed, message in reversed(checks):
        error = tf.where(failed, message, error)
    return error


@tf.autograph.experimental.do_not_convert
def parse_lines(lines: tf.Tensor, default_lang: tf.Tensor | str) -> dict:
    """Validates and splits TSV lines: the one definition of a well-formed line.

    Args:
      lines: tf.string `[n]`. Lines without their line break.
      default_lang: tf.string scalar. The language of 2-column lines (the file's).

    Returns:
      dict of `[n]` tensors: tf.string `lang`, `src`, `tgt` (stripped) and `error` (""
      for a valid pair, else why the line is malformed), and bool `blank` (an empty or
      whitespace-only line: skipped, not malformed).
    """
    blank = tf.equal(_strip(lines), "")
    fields = tf.strings.split(lines, "\t")
    count = fields.row_lengths()
    padded = fields.to_tensor("", shape=[None, 3])
    three = tf.equal(count, 3)
    lang = _strip(tf.where(three, padded[:, 0], default_lang))
    src = _strip(tf.where(three, padded[:, 1], padded[:, 0]))
    tgt = _strip(tf.where(three, padded[:, 2], padded[:, 1]))
    fields_error = tf.strings.join(["expected 2 or 3 tab-separated fields, got ",
                                    tf.strings.as_string(count)])
    utf8 = _utf8_error(lines, "")
    error = _first_error([
        (tf.not_equal(utf8, ""), utf8),
        (tf.logical_and(tf.not_equal(count, 2), tf.logical_not(three)), fields_error),
        (tf.equal(lang, ""), "empty language field"),
        (tf.equal(src, ""), "empty source field"),
        (tf.equal(tgt, ""), "empty target field"),
    ], tf.shape(lines))
    return {"lang": lang, "src": src, "tgt": tgt, "error": tf.where(blank, "", error),
            "blank": blank}


@tf.autograph.experimental.do_not_convert
def parse_examples(records: tf.Tensor, default_lang: tf.Tensor | str) -> dict:
    """Validates serialized tf.train.Example pairs, as `parse_lines` does lines.

    Features `src_raw` and `tgt_raw` must hold one non-empty UTF-8 string each; `lang`
    is optional (default: the file's language). A record that is not an Example, or a
    feature of another type, fails the whole batch (the manifest pass reports the file).
    """
    features = tf.io.parse_example(records, {
        k: tf.io.RaggedFeature(tf.string) for k in ("lang", "src_raw", "tgt_raw")})
    values, checks = {}, []
    for key, required in (("lang", False), ("src_raw", True), ("tgt_raw", True)):
        ragged = features[key]
        n = ragged.row_lengths()
        first = ragged.to_tensor("", shape=[None, 1])[:, 0]
        if not required:
            first = tf.where(tf.equal(n, 0), default_lang, first)
        else:
            checks.append((tf.equal(n, 0), f"missing feature {key!r}"))
        checks.append((n > 1, tf.strings.join([f"feature {key!r} must hold one string, got ",
                                               tf.strings.as_string(n)])))
        utf8 = _utf8_error(first, f"feature {key!r}: ")
        value = _strip(first)
        checks.append((tf.not_equal(utf8, ""), utf8))
        checks.append((tf.equal(value, ""), f"feature {key!r} is empty"))
        values[key] = value
    error = _first_error(checks, tf.shape(records))
    return {"lang": values["lang"], "src": values["src_raw"], "tgt": values["tgt_raw"],
            "error": error, "blank": tf.zeros(tf.shape(records), tf.bool)}


def example_bytes(features: dict) -> bytes:
    """A serialized tf.train.Example of string features (`src_raw`, `tgt_raw`, `lang`)."""
    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") if isinstance(v, str) else v])) for k, v in features.items()}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# Traced once and called from every reader's graph (a training run opens one per
# language; tracing the parsers into each would cost seconds and megabytes apiece).
_SIGNATURE = [tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.string)]
_traced_lines = tf.function(parse_lines, input_signature=_SIGNATURE)
_traced_examples = tf.function(parse_examples, input_signature=_SIGNATURE)


def parsed_file(path: tf.Tensor, kind: tf.Tensor, default_lang: tf.Tensor, *,
                batch: int = PARSE_BATCH, parallel: bool = True) -> tf.data.Dataset:
    """One file's records in batches of `batch`, each parsed (see `parse_lines`), with
    `line`: int64 1-based line (record) numbers. Works inside `flat_map`.

    Training keeps one of these open per language, so it reads with small batches and
    no parallel parsing (`parallel=False`), which bounds the memory per language; the
    manifest pass reads one file at a time with large batches in parallel.
    """
    is_tfrecord = tf.equal(kind, "tfrecord")
    calls = tf.data.AUTOTUNE if parallel else None
    buffer = None if parallel else 64 << 10
    # One of the two readers gets the file and the other none: a dataset's type cannot
    # depend on a tensor, and this runs inside flat_map.
    text = tf.data.TextLineDataset(tf.boolean_mask([path], [tf.logical_not(is_tfrecord)]),
                                   compression_type=tf.where(tf.equal(kind, "gzip"), "GZIP", ""),
                                   buffer_size=buffer)
    records = tf.data.TFRecordDataset(tf.boolean_mask([path], [is_tfrecord]), buffer_size=buffer)
    text = text.batch(batch).map(lambda lines: _traced_lines(lines, default_lang),
                                 num_parallel_calls=calls, deterministic=True if parallel else None)
    records = records.batch(batch).map(lambda r: _traced_examples(r, default_lang),
                                       num_parallel_calls=calls, deterministic=True if parallel else None)

    def number(index, parsed):
        start = index * batch + 1
        return {**parsed, "line": tf.range(start, start + tf.size(parsed["error"], tf.int64))}

    return text.concatenate(records).enumerate().map(number)


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of the corpus as the manifest pass found it."""

    path: str
    bytes: int
    pairs: dict              # language -> valid pairs
    malformed: int = 0
    malformed_examples: tuple = ()  # "line: why", the first few


@dataclasses.dataclass(frozen=True)
class Preparation:
    """What `labse_tf.prepare` read to write a corpus, and what it dropped."""

    inputs: tuple             # of FileEntry: the raw files, valid pairs and malformed lines
    excluded: dict            # language -> pairs dropped: a side is an --exclude sentence
    duplicates: dict          # language -> pairs dropped: the same pair came before
    exclude_files: tuple = ()

    @property
    def malformed(self) -> int:
        return sum(f.malformed for f in self.inputs)

    def to_json(self) -> dict:
        return {"inputs": [_entry_json(f) for f in self.inputs],
                "malformed": self.malformed,
                "excluded": dict(sorted(self.excluded.items())),
                "duplicates": dict(sorted(self.duplicates.items())),
                "exclude_files": list(self.exclude_files)}


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A corpus: its files with their per-language pair counts."""

    files: tuple  # of FileEntry, in input order
    preparation: Preparation | None = None  # for a corpus written by labse_tf.prepare

    def counts(self) -> dict:
        """Valid pairs per language, languages sorted."""
        total = collections.Counter()
        for entry in self.files:
            total.update(entry.pairs)
        return dict(sorted(total.items()))

    @property
    def langs(self) -> tuple:
        return tuple(self.counts())

    @property
    def pairs(self) -> int:
        return sum(self.counts().values())

    @property
    def malformed(self) -> int:
        return sum(f.malformed for f in self.files)

    def signature(self) -> list:
        """What must not change for a resumed run to continue its stream: paths and sizes."""
        return [(f.path, f.bytes) for f in self.files]

    def summary(self) -> dict:
        return {"pairs": self.pairs, "languages": len(self.counts()),
                "malformed_lines": self.malformed,
                "malformed_examples": [f"{f.path}:{e}" for f in self.files
                                       for e in f.malformed_examples][:20]}

    def to_json(self) -> dict:
        raw = {"version": MANIFEST_VERSION, "pairs": self.pairs, "malformed": self.malformed,
               "languages": self.counts(), "files": [_entry_json(f) for f in self.files]}
        if self.preparation:
            raw["preparation"] = self.preparation.to_json()
        return raw


def _entry_json(f: FileEntry) -> dict:
    return {"path": f.path, "bytes": f.bytes, "pairs": dict(sorted(f.pairs.items())),
            "malformed": f.malformed, "malformed_examples": list(f.malformed_examples)}


def _entries(raw, base: str, where: str) -> list[FileEntry]:
    """FileEntry of each JSON entry; relative paths are taken from `base`."""
    entries = []
    for i, f in enumerate(raw or ()):
        try:
            p = f["path"]
            entries.append(FileEntry(
                path=p if files.is_url(p) or p.startswith("/") else files.join(base, p),
                bytes=int(f["bytes"]), pairs={k: int(v) for k, v in f["pairs"].items()},
                malformed=int(f.get("malformed", 0)),
                malformed_examples=tuple(f.get("malformed_examples", ()))))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{where}[{i}]: malformed entry ({e!r})") from None
    return entries


def write_manifest(manifest: Manifest, path: str) -> str:
    return files.write_json(path, manifest.to_json())


def read_manifest(path: str) -> Manifest:
    """Reads a manifest; relative file paths are taken from the manifest's directory.

    Raises:
      DataError: the file is not a manifest of this version (naming the field).
    """
    try:
        raw = files.read_json(path)
    except (ValueError, tf.errors.OpError) as e:
        raise DataError(f"{path}: not a readable manifest: {e}") from None
    if not isinstance(raw, dict) or raw.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path}: version: expected {MANIFEST_VERSION}, got "
                        f"{raw.get('version') if isinstance(raw, dict) else raw!r}")
    base = files.dirname(path)
    entries = _entries(raw.get("files"), base, f"{path}: files")
    if not entries:
        raise DataError(f"{path}: files: the manifest lists no file")
    prep = raw.get("preparation")
    if prep is not None:
        try:
            prep = Preparation(
                inputs=tuple(_entries(prep["inputs"], base, f"{path}: preparation.inputs")),
                excluded={k: int(v) for k, v in prep["excluded"].items()},
                duplicates={k: int(v) for k, v in prep["duplicates"].items()},
                exclude_files=tuple(prep.get("exclude_files", ())))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{path}: preparation: malformed ({e!r})") from None
    return Manifest(tuple(entries), prep)


def resolve_inputs(patterns: Iterable[str]) -> tuple[list[str], Manifest | None]:
    """Data files named by paths and globs, or a prepared corpus (a manifest).

    A pattern that is a `manifest.json`, or a directory holding one (what
    `labse_tf.prepare` writes), stands for the files its manifest lists, counted already.

    Returns:
      (files, manifest or None): the manifest when the input was one prepared corpus.
    """
    patterns = list(patterns)
    manifests = []
    for p in patterns:
        if files.basename(p) == MANIFEST_FILE and not files.has_magic(p):
            manifests.append(p)
        elif not files.has_magic(p) and files.isdir(p) and files.exists(files.join(p, MANIFEST_FILE)):
            manifests.append(files.join(p, MANIFEST_FILE))
    if manifests:
        if len(patterns) > 1:
            raise DataError(f"{patterns}: a prepared corpus ({manifests[0]}) cannot be mixed "
                            "with other inputs; list its files instead")
        manifest = read_manifest(manifests[0])
        return [f.path for f in manifest.files], manifest
    try:
        return files.expand(patterns, what="data"), None
    except files.FileError as e:
        raise DataError(str(e)) from None


def file_table(paths: Sequence[str]) -> tuple:
    """(path, kind, default language) string tensors of files, for `parsed_files`."""
    return (tf.constant(list(paths)), tf.constant([file_kind(p) for p in paths]),
            tf.constant([file_language(p) for p in paths]))


def parsed_files(paths: Sequence[str]) -> tf.data.Dataset:
    """`parsed_file` batches of several files in order, each with its int64 `file` index
    (one dataset, so the parsing graph is traced once, not once per file)."""

    def one(index, row):
        return parsed_file(*row).map(lambda batch: {**batch, "file": index})

    return tf.data.Dataset.from_tensor_slices(file_table(paths)).enumerate().flat_map(one)


def unreadable(paths: Sequence[str], first: int) -> DataError:
    """The error naming the first file from `first` on that cannot be read or parsed."""
    for path in paths[first:]:
        try:
            for _ in parsed_files([path]):
                pass
        except tf.errors.OpError as e:
            return DataError(f"{path}: cannot read: {e.message.splitlines()[0]}")
    return DataError(f"{paths[first]}: cannot read")


def build_manifest(paths: Sequence[str], *, report: int = 5,
                   log: Callable[[str], None] = print) -> Manifest:
    """Counts valid pairs per file and language in one streaming pass (bounded memory).

    Malformed lines are counted per file, and the first `report` in all are logged as
    `file:line: skipped malformed line: why`.

    Raises:
      DataError: a file cannot be read or parsed (naming it), or no valid pair was found.
    """
    paths = list(paths)
    pairs = [collections.Counter() for _ in paths]
    malformed, examples = [0] * len(paths), [[] for _ in paths]
    reported, lines, current, start, shown = 0, 0, 0, time.time(), time.time()
    try:
        for batch in parsed_files(paths).prefetch(4).as_numpy_iterator():
            current = int(batch["file"])
            error, line = batch["error"], batch["line"]
            lines += len(error)
            ok = (error == b"") & ~batch["blank"]
            langs, n = np.unique(batch["lang"][ok], return_counts=True)
            pairs[current].update({l.decode("utf-8"): int(c) for l, c in zip(langs, n)})
            for i in np.flatnonzero(error != b""):
                malformed[current] += 1
                why = error[i].decode("utf-8")
                if len(examples[current]) < report:
                    examples[current].append(f"{line[i]}: {why}")
                if reported < report:
                    reported += 1
                    unit = "record" if file_kind(paths[current]) == "tfrecord" else "line"
                    log(f"{paths[current]}:{line[i]}: skipped malformed {unit}: {why}")
            if time.time() - shown > 30:
                shown = time.time()
                log(f"counting: file {current + 1}/{len(paths)}, {lines:,} lines, "
                    f"{lines / (shown - start):,.0f} lines/s")
    except tf.errors.OpError:
        raise unreadable(paths, current) from None
    manifest = Manifest(tuple(
        FileEntry(p, files.size(p), dict(sorted(c.items())), m, tuple(e))
        for p, c, m, e in zip(paths, pairs, malformed, examples)))
    if manifest.malformed > reported:
        log(f"... {manifest.malformed} malformed lines skipped in all")
    if not manifest.pairs:
        raise DataError(f"no valid translation pair in {paths}")
    log(f"counted {manifest.pairs:,} pairs in {len(manifest.counts())} languages in "
        f"{len(paths)} file(s), {lines:,} lines in {time.time() - start:.1f}s")
    return manifest
