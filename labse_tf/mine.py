r"""Mines translation pairs between two monolingual files with the ratio margin.

    python -m labse_tf.mine --model=runs/demo/export --src=de.txt --tgt=en.txt --out=pairs.tsv
    python -m labse_tf.mine --model_dir=runs/demo --src=de.txt --tgt=en.txt --out=pairs.tsv \
        --gold=gold.tsv --threshold=1.06 --k=4 --strategy=intersect
    # corpus scale: embed each file once (labse_tf.embed), then mine the embeddings
    python -m labse_tf.mine --src=de.txt.gz --src_embeddings=emb/de \
        --tgt=en.txt.gz --tgt_embeddings=emb/en --out=pairs.tsv --index=ivf

Each file holds one sentence a line (plain or .gz, any filesystem); blank lines are skipped
and repeated lines count once (the first). Sentences are embedded here with the model flags,
in memory, or come from labse_tf.embed's directories of those very files (checked line by
line), read a shard at a time. The k nearest neighbours both ways come from a FAISS index
(labse_tf.index: exact below --flat_max_pairs, approximate above), so memory is one index
and the `[n, k]` neighbour lists, not `[n, m]`.

The output has one pair a line, `score<TAB>src<TAB>tgt`, by decreasing score, keeping the
pairs whose ratio margin reaches --threshold (at most --max_pairs of them). With --gold
(lines `src<TAB>tgt`, the sentences of a true pair) it also reports BUCC-style precision,
recall and F1 of the written pairs, and the threshold that maximises F1.
"""

import dataclasses
import sys
from typing import Callable, Iterable

import numpy as np
from absl import app, flags, logging

from labse_tf import embeddings, evaluate, files, index, mining

FLAGS = flags.FLAGS


def _define_flags():
    evaluate.define_model_flags(required=False)
    flags.adopt_module_key_flags(evaluate)  # so that --help lists --model and --model_dir
    flags.DEFINE_string("src", None, "Source sentences, one a line.", required=True)
    flags.DEFINE_string("tgt", None, "Target sentences, one a line.", required=True)
    flags.DEFINE_string("src_embeddings", "", "labse_tf.embed's directory of --src: mine its "
                        "embeddings instead of embedding --src here.")
    flags.DEFINE_string("tgt_embeddings", "", "labse_tf.embed's directory of --tgt.")
    flags.DEFINE_string("out", None, "Output TSV: score<TAB>src<TAB>tgt (any filesystem).",
                        required=True)
    flags.DEFINE_float("threshold", 1.06, "Keep pairs whose ratio margin is at least this.")
    flags.DEFINE_integer("max_pairs", 0, "Write at most this many pairs, the highest "
                         "scores; 0: no limit.", lower_bound=0)
    flags.DEFINE_integer("k", 4, "Neighbourhood size of the ratio margin.", lower_bound=1)
    flags.DEFINE_enum("strategy", "max", mining.STRATEGIES,
                      "Candidates are every source's best target (forward) and every target's "
                      "best source (backward). max: both lists, then a one-to-one alignment "
                      "greedily from the highest score; intersect: only pairs found in both "
                      "directions.")
    index.define_flags()
    flags.DEFINE_string("gold", "", "True pairs, `src<TAB>tgt` a line, to score the mining.")


def read_gold(path: str) -> set[tuple[str, str]]:
    """Gold pairs from `src<TAB>tgt` lines."""
    gold = set()
    for number, line in enumerate(evaluate.iter_lines(path), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected src<TAB>tgt, found {len(fields)} "
                             "tab-separated fields")
        gold.add((fields[0], fields[1]))
    return gold


@dataclasses.dataclass
class Side:
    """One file's distinct sentences: where they are, and (if asked) what they say.

    Attributes:
      path: str. The text file.
      lines: int64 `[n]`. The 1-based line of each distinct non-blank sentence (its first
        occurrence), in file order: row i of the side is line `lines[i]`.
      non_blank: int64 `[N]`. Every non-blank line (the rows of an embedding directory).
      first: bool `[N]`. Which of those are first occurrences (the rows kept).
      texts: list of str, the n sentences, if asked for; else None.
      rows_of: dict str → int. The row of each sentence asked about.
    """

    path: str
    lines: np.ndarray
    non_blank: np.ndarray
    first: np.ndarray
    texts: list[str] | None
    rows_of: dict[str, int]


def read_side(path: str, *, keep_texts: bool, wanted: Iterable[str] = ()) -> Side:
    """Reads a file once, streaming: its distinct non-blank sentences and their lines.

    Repeats are found by a 64-bit hash of the text (Python's, salted per process), so only
    `[lines]` integers are held unless `keep_texts`; two distinct sentences of a file would
    merge only on a hash collision, about one chance in 10^5 at 10^7 lines.

    Args:
      path: str. The text file.
      keep_texts: bool. Whether to keep the sentences (to embed them here).
      wanted: sentences whose rows to report in `rows_of` (the gold pairs' side).
    """
    wanted = set(wanted)
    numbers, hashes, texts, found = [], [], [], {}
    for number, line in enumerate(evaluate.iter_lines(path), 1):
        if not line.strip():
            continue
        if line in wanted and line not in found:
            found[line] = len(numbers)
        numbers.append(number)
        hashes.append(hash(line))
        if keep_texts:
            texts.append(line)
    if not numbers:
        raise ValueError(f"{path}: no sentences")
    non_blank = np.array(numbers, np.int64)
    _, first_index = np.unique(np.array(hashes, np.int64), return_index=True)
    first = np.zeros(len(non_blank), bool)
    first[first_index] = True
    kept = np.flatnonzero(first)
    return Side(path, non_blank[kept], non_blank, first,
                [texts[i] for i in kept] if keep_texts else None,
                {text: int(np.searchsorted(kept, i)) for text, i in found.items()})


def side_vectors(side: Side, embeddings_dir: str, embed_fn: evaluate.EmbedFn | None,
                 log: Callable[[str], None]) -> index.Vectors:
    """The side's embeddings: embedded here, or its rows of labse_tf.embed's directory."""
    if not embeddings_dir:
        log(f"embedding {len(side.lines):,} sentences ({side.path})")
        return index.Vectors.of(embed_fn(side.texts))
    directory = embeddings.EmbeddingDir(embeddings_dir)
    if not directory.complete:
        raise ValueError(f"{embeddings_dir}: incomplete ({directory.rows:,} rows so far); "
                         f"finish it with labse_tf.embed --input={directory.source}")
    rows = directory.line_numbers()
    if not np.array_equal(rows, side.non_blank):
        raise ValueError(
            f"{embeddings_dir}: its {len(rows):,} rows are not the {len(side.non_blank):,} "
            f"non-blank lines of {side.path} (it embedded {directory.source}; first "
            f"difference at row {_first_difference(rows, side.non_blank):,})")
    log(f"{len(side.lines):,} sentences of {side.path} from {embeddings_dir} "
        f"({directory.model})")
    return directory.vectors(keep=side.first)


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    unequal = np.flatnonzero(a[:n] != b[:n])
    return int(unequal[0]) if len(unequal) else n


def fetch_lines(path: str, numbers: Iterable[int]) -> dict[int, str]:
    """The text of the given 1-based lines of a file, in one streaming pass."""
    numbers = set(numbers)
    last = max(numbers, default=0)
    found = {}
    for number, line in enumerate(evaluate.iter_lines(path), 1):
        if number in numbers:
            found[number] = line
        if number >= last:
            break
    return found


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    log = lambda msg: print(msg, flush=True)
    embedded = {"src": FLAGS.src_embeddings, "tgt": FLAGS.tgt_embeddings}
    needs_model = not all(embedded.values())
    try:
        if needs_model and not (FLAGS.model or FLAGS.model_dir or FLAGS.trigram_baseline):
            raise ValueError("one of --model, --model_dir or --trigram_baseline is needed "
                             "unless both --src_embeddings and --tgt_embeddings are given")
        gold = read_gold(FLAGS.gold) if FLAGS.gold else None
        sides = {name: read_side(getattr(FLAGS, name), keep_texts=not embedded[name],
                                 wanted={pair[i] for pair in gold or ()})
                 for i, name in enumerate(("src", "tgt"))}
        embed_fn = None
        if needs_model:
            texts = [t for side in sides.values() if side.texts for t in side.texts]
            embed_fn, _ = evaluate.embed_fn_from_flags(log, texts)
        vectors = {name: side_vectors(sides[name], embedded[name], embed_fn, log)
                   for name in sides}
        if vectors["src"].dim != vectors["tgt"].dim:
            raise ValueError(f"the source embeddings ({embedded['src'] or FLAGS.src}) have "
                             f"dimension {vectors['src'].dim} but the target embeddings "
                             f"({embedded['tgt'] or FLAGS.tgt}) have {vectors['tgt'].dim}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    src, tgt = sides["src"], sides["tgt"]
    options = index.options_from_flags()
    log(f"searching {FLAGS.k} nearest neighbours both ways ({len(src.lines):,} × "
        f"{len(tgt.lines):,}, index {FLAGS.index})")
    x2y = index.knn(vectors["src"], vectors["tgt"], FLAGS.k, options, log=log)
    y2x = index.knn(vectors["tgt"], vectors["src"], FLAGS.k, options, log=log)
    scores, xs, ys = mining.select(mining.matches(*x2y, *y2x), FLAGS.strategy)
    kept = np.flatnonzero(scores >= FLAGS.threshold)[:FLAGS.max_pairs or None]
    src_text = fetch_lines(src.path, src.lines[xs[kept]].tolist())
    tgt_text = fetch_lines(tgt.path, tgt.lines[ys[kept]].tolist())
    files.makedirs(files.dirname(FLAGS.out))
    with files.open_file(FLAGS.out, "w") as f:
        for p in kept:
            f.write(f"{scores[p]:.6f}\t{src_text[src.lines[xs[p]]]}\t"
                    f"{tgt_text[tgt.lines[ys[p]]]}\n")
    limit = f", at most {FLAGS.max_pairs:,}" if FLAGS.max_pairs else ""
    log(f"{len(kept):,} of {len(scores):,} candidate pairs have a margin of at least "
        f"{FLAGS.threshold}{limit}: {files.absolute(FLAGS.out)}")
    if gold is not None:
        gold_rows = {(src.rows_of[s], tgt.rows_of[t]) for s, t in gold
                     if s in src.rows_of and t in tgt.rows_of}
        correct = np.array([pair in gold_rows for pair in zip(xs.tolist(), ys.tolist())], bool)
        p, r, f1 = mining.precision_recall_f1(int(correct[kept].sum()), len(kept), len(gold))
        log(f"gold: {len(gold):,} pairs")
        log(f"at threshold {FLAGS.threshold:.6f}: precision {p:.4f} recall {r:.4f} F1 {f1:.4f}")
        best = mining.best_threshold(scores, correct, len(gold))
        log(f"best threshold {best['threshold']:.6f}: precision {best['precision']:.4f} "
            f"recall {best['recall']:.4f} F1 {best['f1']:.4f}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
