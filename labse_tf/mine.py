r"""Mines translation pairs between two monolingual files with the ratio margin.

    python -m labse_tf.mine --model=runs/demo/export --src=de.txt --tgt=en.txt --out=pairs.tsv
    python -m labse_tf.mine --model_dir=runs/demo --src=de.txt --tgt=en.txt --out=pairs.tsv \
        --gold=gold.tsv --threshold=1.06 --k=4 --strategy=intersect

Each file holds one sentence a line (no tabs); blank lines are skipped and repeated lines are
embedded once. The output has one pair a line, `score<TAB>src<TAB>tgt`, by decreasing score, keeping
the pairs whose ratio margin reaches --threshold. Similarities are searched in blocks of at
most --block_mb, so files of any size fit in memory once their embeddings do.

With --gold (lines `src<TAB>tgt`, the sentences of a true pair) it also reports BUCC-style
precision, recall and F1 at --threshold and at the threshold that maximises F1.
"""

import os
import sys

import numpy as np
from absl import app, flags, logging

from labse_tf import evaluate, mining

FLAGS = flags.FLAGS


def _define_flags():
    evaluate.define_model_flags()
    flags.adopt_module_key_flags(evaluate)  # so that --help lists --model and --model_dir
    flags.DEFINE_string("src", None, "Source sentences, one a line.", required=True)
    flags.DEFINE_string("tgt", None, "Target sentences, one a line.", required=True)
    flags.DEFINE_string("out", None, "Output TSV: score<TAB>src<TAB>tgt.", required=True)
    flags.DEFINE_float("threshold", 1.06, "Keep pairs whose ratio margin is at least this.")
    flags.DEFINE_integer("k", 4, "Neighbourhood size of the ratio margin.", lower_bound=1)
    flags.DEFINE_enum("strategy", "max", mining.STRATEGIES,
                      "Candidates are every source's best target (forward) and every target's "
                      "best source (backward). max: both lists, then a one-to-one alignment "
                      "greedily from the highest score; intersect: only pairs found in both "
                      "directions.")
    flags.DEFINE_float("block_mb", 256.0, "Memory for one block of the neighbour search, in "
                       "MiB: a block is as many sentences' similarities to every sentence of "
                       "the other file as fit.", lower_bound=0.0)
    flags.DEFINE_string("gold", "", "True pairs, `src<TAB>tgt` a line, to score the mining.")


def read_sentences(path: str) -> list[str]:
    """The distinct non-blank lines of a file, in first-seen order."""
    return list(dict.fromkeys(line for line in evaluate.read_lines(path) if line.strip()))


def read_gold(path: str) -> set[tuple[str, str]]:
    """Gold pairs from `src<TAB>tgt` lines."""
    gold = set()
    for number, line in enumerate(evaluate.read_lines(path), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected src<TAB>tgt, found {len(fields)} "
                             "tab-separated fields")
        gold.add((fields[0], fields[1]))
    return gold


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    log = lambda msg: print(msg, flush=True)
    try:
        src, tgt = read_sentences(FLAGS.src), read_sentences(FLAGS.tgt)
        gold = read_gold(FLAGS.gold) if FLAGS.gold else None
        if not src or not tgt:
            raise ValueError(f"{FLAGS.src if not src else FLAGS.tgt}: no sentences")
        embed_fn, _ = evaluate.embed_fn_from_flags(log, src + tgt)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    log(f"embedding {len(src):,} source sentences ({FLAGS.src})")
    src_emb = embed_fn(src)
    log(f"embedding {len(tgt):,} target sentences ({FLAGS.tgt})")
    tgt_emb = embed_fn(tgt)
    log(f"searching {FLAGS.k} nearest neighbours both ways")
    scores, xs, ys = mining.mine(src_emb, tgt_emb, k=FLAGS.k, strategy=FLAGS.strategy,
                                 max_block_bytes=max(1, int(FLAGS.block_mb * 2**20)))
    kept = scores >= FLAGS.threshold
    if os.path.dirname(FLAGS.out):
        os.makedirs(os.path.dirname(FLAGS.out), exist_ok=True)
    with open(FLAGS.out, "w", encoding="utf-8") as f:
        for score, i, j in zip(scores[kept], xs[kept], ys[kept]):
            f.write(f"{score:.6f}\t{src[i]}\t{tgt[j]}\n")
    log(f"{int(kept.sum()):,} of {len(scores):,} candidate pairs have a margin of at least "
        f"{FLAGS.threshold}: {os.path.abspath(FLAGS.out)}")
    if gold is not None:
        correct = np.array([(src[i], tgt[j]) in gold for i, j in zip(xs, ys)], bool)
        p, r, f1 = mining.precision_recall_f1(int(correct[kept].sum()), int(kept.sum()), len(gold))
        log(f"gold: {len(gold):,} pairs")
        log(f"at threshold {FLAGS.threshold:.6f}: precision {p:.4f} recall {r:.4f} F1 {f1:.4f}")
        best = mining.best_threshold(scores, correct, len(gold))
        log(f"best threshold {best['threshold']:.6f}: precision {best['precision']:.4f} "
            f"recall {best['recall']:.4f} F1 {best['f1']:.4f}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
