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
from typing import Callable, Iterable

import numpy as np
from absl import app, flags, logging

from labse_tf import cli, embeddings, evaluate, files, index, mining

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
    flags.adopt_module_key_flags(index)  # so that --help lists --index, --nprobe, ...
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


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which candidate pairs are found and kept: as the flags of the same names."""

    k: int = 4
    strategy: str = "max"
    threshold: float = 1.06
    max_pairs: int = 0


def mine_files(src_path: str, tgt_path: str, out: str, *, src_embeddings: str = "",
               tgt_embeddings: str = "",
               embed_fn_for: Callable[[list[str]], evaluate.EmbedFn] | None = None,
               selection: Selection = Selection(), gold_path: str = "",
               index_options: index.IndexOptions = index.IndexOptions(),
               log: Callable[[str], None] = lambda msg: None) -> dict:
    """Mines `src_path` against `tgt_path` into `out`: what the command does.

    Args:
      src_path, tgt_path: str. Text files, one sentence a line.
      out: str. The output TSV.
      src_embeddings, tgt_embeddings: str. labse_tf.embed's directories of those files, or
        "" to embed them here.
      embed_fn_for: callable. Given every sentence to embed here (the trigram baseline fits
        its IDF on them), the EmbedFn; needed unless both sides come embedded.
      selection: Selection. k, strategy, threshold, max_pairs.
      gold_path: str. As --gold.
      index_options: index.IndexOptions.
      log: progress printer.

    Returns:
      {"candidates": int, "written": int, and with a gold file "gold": int,
      "at_threshold": {precision, recall, f1}, "best": {threshold, precision, recall, f1}}.

    Raises:
      ValueError (files.FileError among them): a missing or unusable input.
    """
    embedded = {"src": src_embeddings, "tgt": tgt_embeddings}
    files.expand([src_path, tgt_path] + ([gold_path] if gold_path else []))
    if not all(embedded.values()) and embed_fn_for is None:
        raise ValueError("a model (--model, --model_dir or --trigram_baseline) is needed "
                         "unless both sides come embedded (--src_embeddings, --tgt_embeddings)")
    gold = read_gold(gold_path) if gold_path else None
    sides = {name: read_side(path, keep_texts=not embedded[name],
                             wanted={pair[i] for pair in gold or ()})
             for i, (name, path) in enumerate([("src", src_path), ("tgt", tgt_path)])}
    embed_fn = None
    if not all(embedded.values()):
        embed_fn = embed_fn_for([t for side in sides.values() if side.texts for t in side.texts])
    vectors = {name: side_vectors(sides[name], embedded[name], embed_fn, log) for name in sides}
    if vectors["src"].dim != vectors["tgt"].dim:
        raise ValueError(f"the source embeddings ({embedded['src'] or src_path}) have "
                         f"dimension {vectors['src'].dim} but the target embeddings "
                         f"({embedded['tgt'] or tgt_path}) have {vectors['tgt'].dim}")
    src, tgt = sides["src"], sides["tgt"]
    k, threshold, max_pairs = selection.k, selection.threshold, selection.max_pairs
    log(f"searching {k} nearest neighbours both ways ({len(src.lines):,} × "
        f"{len(tgt.lines):,} sentences)")
    x2y, y2x = index.knn_both_ways(vectors["src"], vectors["tgt"], k, index_options, log=log)
    scores, xs, ys = mining.select(mining.matches(*x2y, *y2x), selection.strategy)
    kept = np.flatnonzero(scores >= threshold)[:max_pairs or None]
    src_text = fetch_lines(src.path, src.lines[xs[kept]].tolist())
    tgt_text = fetch_lines(tgt.path, tgt.lines[ys[kept]].tolist())
    files.makedirs(files.dirname(out))
    with files.open_file(out, "w") as f:
        for p in kept:
            f.write(f"{scores[p]:.6f}\t{src_text[src.lines[xs[p]]]}\t"
                    f"{tgt_text[tgt.lines[ys[p]]]}\n")
    limit = f", at most {max_pairs:,}" if max_pairs else ""
    log(f"{len(kept):,} of {len(scores):,} candidate pairs have a margin of at least "
        f"{threshold}{limit}: {files.absolute(out)}")
    summary = {"candidates": len(scores), "written": len(kept)}
    if gold is not None:
        summary.update(_score_gold(gold, src, tgt, (scores, xs, ys), kept, threshold, log))
    return summary


def _score_gold(gold, src, tgt, candidates, kept, threshold: float, log) -> dict:
    """Precision, recall and F1 of the kept candidates, and the best threshold, on `gold`."""
    scores, xs, ys = candidates
    gold_rows = {(src.rows_of[s], tgt.rows_of[t]) for s, t in gold
                 if s in src.rows_of and t in tgt.rows_of}
    correct = np.array([pair in gold_rows for pair in zip(xs.tolist(), ys.tolist())], bool)
    p, r, f1 = mining.precision_recall_f1(int(correct[kept].sum()), len(kept), len(gold))
    best = mining.best_threshold(scores, correct, len(gold))
    log(f"gold: {len(gold):,} pairs")
    log(f"at threshold {threshold:.6f}: precision {p:.4f} recall {r:.4f} F1 {f1:.4f}")
    log(f"best threshold {best['threshold']:.6f}: precision {best['precision']:.4f} "
        f"recall {best['recall']:.4f} F1 {best['f1']:.4f}")
    return {"gold": len(gold), "best": best,
            "at_threshold": {"precision": p, "recall": r, "f1": f1}}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    has_model = FLAGS.model or FLAGS.model_dir or FLAGS.trigram_baseline
    with cli.exit_on(FileNotFoundError, ValueError):
        mine_files(
            FLAGS.src, FLAGS.tgt, FLAGS.out, src_embeddings=FLAGS.src_embeddings,
            tgt_embeddings=FLAGS.tgt_embeddings,
            embed_fn_for=(lambda corpus: evaluate.embed_fn_from_flags(cli.log, corpus)[0])
            if has_model else None,
            selection=Selection(k=FLAGS.k, strategy=FLAGS.strategy, threshold=FLAGS.threshold,
                                max_pairs=FLAGS.max_pairs),
            gold_path=FLAGS.gold,
            index_options=index.options_from_flags(), log=cli.log)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
