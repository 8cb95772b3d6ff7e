r"""Embeds a text file of any size into a sharded embedding directory, resumably.

    python -m labse_tf.embed --model=runs/demo/export --input=de.txt.gz --output_dir=emb/de
    python -m labse_tf.embed --model_dir=runs/demo --input=gs://bucket/en.txt \
        --output_dir=gs://bucket/emb/en --dtype=float32 --shard_size=100000

The input holds one sentence a line, plain or .gz, on any filesystem; every non-blank line
gets one row. The file is read as a stream, `--shard_size` lines at a time: memory is one
shard's sentences and embeddings, whatever the file's size. Within a shard, sentences of
similar length are batched together (labse_tf.evaluate.Embedder). Each shard is written as
it is finished (the layout: labse_tf/embeddings.py); rerunning the same command after a
crash or a kill continues after the last complete shard, and a finished directory is left
as it is. labse_tf.mine reads the directories (--src_embeddings, --tgt_embeddings).
"""

import sys
import time
from typing import Callable, TextIO

import numpy as np
from absl import app, flags, logging

from labse_tf import cli, embeddings, evaluate, files

FLAGS = flags.FLAGS

# Seconds between progress redraws on a terminal, and between progress lines in a log.
_REDRAW_SECONDS, _LINE_SECONDS = 0.5, 30.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


class ProgressBar:
    """`[######......]  45.0%  450,000/1,000,000 sentences  2,340/s  ETA 3m 55s`.

    Redrawn in place on a terminal, printed as a line every 30 s otherwise (a log file).
    The rate and the estimate count only the sentences of this run, not those a resumed
    run found done.
    """

    def __init__(self, total: int, done: int = 0, stream: TextIO = sys.stdout):
        self.total, self.done, self._stream = total, done, stream
        self._start_done, self._start = done, time.monotonic()
        self._shown = 0.0
        self._tty = stream.isatty()

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        fraction = self.done / self.total if self.total else 1.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        bar = "#" * int(20 * fraction)
        return (f"[{bar:<20}] {fraction:6.1%}  {self.done:,}/{self.total:,} sentences  "
                f"{rate:,.0f}/s  ETA {eta}")

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._shown >= (_REDRAW_SECONDS if self._tty else _LINE_SECONDS):
            self._show()
            self._shown = now

    def close(self) -> None:
        self._show()
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _show(self) -> None:
        self._stream.write(("\r" if self._tty else "") + self.line() + ("" if self._tty else "\n"))
        self._stream.flush()


def count_rows(path: str) -> int:
    """The non-blank lines of a text file: the rows it will have."""
    return sum(1 for line in evaluate.iter_lines(path) if line.strip())


def embed_file(embedder: evaluate.Embedder, writer: embeddings.ShardWriter, *,
               log: Callable[[str], None] = lambda msg: None,
               progress: ProgressBar | None = None) -> embeddings.EmbeddingDir:
    """Embeds the non-blank lines of the writer's source, after the shards it has.

    Args:
      embedder: evaluate.Embedder. The model the writer was opened for, with its batch size.
      writer: embeddings.ShardWriter. A new or continued directory; its source is read.
      log: progress printer.
      progress: optional ProgressBar to advance by each batch.

    Returns:
      The complete directory.
    """
    meta = writer.meta
    path, shard_size = meta["source"], meta["shard_size"]
    if meta["complete"]:
        return embeddings.EmbeddingDir(writer.path)
    if meta["shards"]:
        log(f"{writer.path}: continuing after {len(meta['shards'])} shards ({meta['rows']:,} "
            f"rows, line {meta['lines_read']:,} of {path})")
    sentences, lines, number = [], [], 0

    def flush(lines_read):
        out = np.zeros([len(sentences), embedder.dim], np.float32)
        for positions, batch in embedder.batches(sentences):
            out[positions] = batch
            if progress:
                progress.update(len(positions))
        writer.add(out, np.array(lines, np.int64), lines_read)
        sentences.clear()
        lines.clear()

    for number, line in enumerate(evaluate.iter_lines(path), 1):
        if number <= meta["lines_read"] or not line.strip():
            continue
        sentences.append(line)
        lines.append(number)
        if len(sentences) == shard_size:
            flush(number)
    if sentences:
        flush(number)
    writer.finish(max(number, meta["lines_read"]))
    return embeddings.EmbeddingDir(writer.path)


def _define_flags():
    evaluate.define_model_flags(baseline=False)
    flags.adopt_module_key_flags(evaluate)  # so that --help lists --model and --model_dir
    flags.DEFINE_string("input", None, "Text file, one sentence a line (plain or .gz; any "
                        "filesystem).", required=True)
    flags.DEFINE_string("output_dir", None, "Embedding directory to write or continue.",
                        required=True)
    flags.DEFINE_enum("dtype", "float16", embeddings.DTYPES, "Storage type of the embeddings "
                      "(float16: half the size; cosines change by ~1e-3).")
    flags.DEFINE_integer("shard_size", 50_000, "Sentences per shard: the unit of memory and of "
                         "the work a kill can lose.", lower_bound=1)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with cli.exit_on(FileNotFoundError, ValueError):
        files.expand([FLAGS.input])
        embedder, model = evaluate.embed_fn_from_flags(cli.log)
        writer = embeddings.ShardWriter.open(
            FLAGS.output_dir, source=FLAGS.input, model=files.absolute(model),
            dim=embedder.dim, dtype=FLAGS.dtype, shard_size=FLAGS.shard_size)
    if writer.meta["complete"]:
        cli.log(f"{FLAGS.output_dir}: already complete ({writer.meta['rows']:,} rows)")
        return
    cli.log(f"counting the lines of {FLAGS.input}")
    progress = ProgressBar(count_rows(FLAGS.input), writer.meta["rows"])
    result = embed_file(embedder, writer, log=cli.log, progress=progress)
    progress.close()
    cli.log(f"{result.rows:,} embeddings of dimension {result.dim} ({result.dtype}) in "
            f"{len(result.shards)} shards: {files.absolute(FLAGS.output_dir)}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
