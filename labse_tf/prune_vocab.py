r"""Prunes a model's vocabulary to the wordpieces a corpus uses, slicing the embedding table.

    python -m labse_tf.prune_vocab --model_dir=runs/labse --corpus='data/train/*.tsv.gz' \
        --keep_langs=deu,fra,pol --output=runs/labse-deu-fra-pol

LaBSE's 501,153-token embedding table is ~385M of its ~471M parameters; a few languages use
a small fraction of it. The pruned vocabulary keeps, in their original order:
- the reserved tokens ([PAD], [UNK], [CLS], [SEP], [MASK]);
- every wordpiece the corpus tokenizes into at least --min_count times;
- each character of the (normalised) corpus as a word start and as a continuation
  (`c`, `##c`) where the vocabulary has them, so that any word written in those characters
  still tokenizes without [UNK].
Greedy longest-match wordpiece picks, at every position, the longest piece in the
vocabulary; each piece it picked before is still there and no longer one was added, so with
--min_count=1 every corpus sentence tokenizes into the same pieces and embeds identically.
The command checks this and reports the fraction of sentences whose tokenization is
unchanged, the vocabulary and parameter counts before and after.

--corpus takes translation pairs in the formats labse_tf.train reads (TSV `src<TAB>tgt` with
the language from the file name, or `lang<TAB>src<TAB>tgt`, plain or .gz; TFRecord); both
sides of the pairs are used. --keep_langs keeps the pairs of those languages only.
OUTPUT is a model directory like MODEL_DIR (config.yaml, vocab.txt, checkpoints/ckpt-0).
"""

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from labse_tf import checkpoints, cli, data, files, rundir
from labse_tf.model import build_encoder, copy_weights
from labse_tf.preprocessing import SPECIAL_TOKENS, Preprocessor, normalize, read_vocab

__all__ = ["corpus_characters", "corpus_sentences", "count_tokens", "prune", "prune_encoder",
           "select_tokens", "unchanged_fraction"]

FLAGS = flags.FLAGS


def corpus_sentences(patterns: Sequence[str], keep_langs: Sequence[str] = (),
                     log=print) -> tuple[list, tuple]:
    """Both sides of the pairs in `patterns`, of `keep_langs` only if given.

    Returns:
      (sentences, languages used).
    """
    pairs, _ = data.read_pairs(patterns, log=log)
    missing = sorted(set(keep_langs) - set(pairs.langs))
    if missing:
        raise data.DataError(f"--keep_langs {missing} not in the corpus (its languages: "
                             f"{', '.join(pairs.langs)})")
    langs = tuple(lang for lang in pairs.langs if not keep_langs or lang in keep_langs)
    sentences = [s for lang, src, tgt in zip(pairs.langs, pairs.src, pairs.tgt)
                 if lang in langs for side in (src, tgt) for s in side]
    return sentences, langs


def _batches(sentences: Sequence[str], batch_size: int):
    for start in range(0, len(sentences), batch_size):
        yield tf.constant(sentences[start:start + batch_size], tf.string)


def count_tokens(preprocessor: Preprocessor, sentences: Sequence[str],
                 batch_size: int = 1024) -> np.ndarray:
    """How often each vocabulary id occurs in the sentences' wordpieces: int64 `[vocab]`."""
    counts = np.zeros(preprocessor.vocab_size, np.int64)
    for batch in _batches(sentences, batch_size):
        ids = preprocessor.tokenize(batch).flat_values.numpy()
        counts += np.bincount(ids, minlength=preprocessor.vocab_size)
    return counts


def corpus_characters(sentences: Sequence[str], lowercase: bool,
                      batch_size: int = 1024) -> set:
    """The characters of the sentences after the Preprocessor's normalisation (no spaces)."""
    chars = set()
    for batch in _batches(sentences, batch_size):
        for text in normalize(batch, lowercase).numpy():
            chars.update(text.decode("utf-8"))
    return {c for c in chars if not c.isspace()}


def select_tokens(tokens: Sequence[str], counts: np.ndarray, characters: set,
                  min_count: int = 1) -> np.ndarray:
    """Ids to keep, ascending: reserved tokens, pieces used >= min_count, the characters.

    Args:
      tokens: the vocabulary.
      counts: int `[len(tokens)]`. Uses of each id in the corpus.
      characters: characters to keep as `c` and `##c` where the vocabulary has them.
      min_count: int. Fewest uses for a piece to be kept.
    """
    keep = np.asarray(counts) >= min_count
    wanted = set(SPECIAL_TOKENS) | characters | {"##" + c for c in characters}
    keep |= np.array([t in wanted for t in tokens])
    return np.flatnonzero(keep)


def prune_encoder(encoder, model_cfg, kept: np.ndarray):
    """A copy of `encoder` whose token embedding holds only the rows `kept`, in that order."""
    pruned = build_encoder(dataclasses.replace(model_cfg, vocab_size=len(kept)), len(kept))
    table = encoder.get_layer("token_embedding").embeddings.path
    source = {w.path: w for w in encoder.weights}
    copy_weights(pruned, lambda path: source[path].numpy()[kept] if path == table
                 else source.get(path), what="pruning the vocabulary")
    return pruned


def unchanged_fraction(full: Preprocessor, pruned: Preprocessor, kept: np.ndarray,
                       sentences: Sequence[str], batch_size: int = 1024) -> float:
    """Fraction of sentences whose wordpieces (as full-vocabulary ids) the pruning kept."""
    if not sentences:
        return 1.0
    same = 0
    for batch in _batches(sentences, batch_size):
        before = full.tokenize(batch).merge_dims(-2, -1).to_list()
        after = pruned.tokenize(batch).merge_dims(-2, -1)
        after = tf.gather(tf.constant(kept), after).to_list()
        same += sum(a == b for a, b in zip(before, after))
    return same / len(sentences)


def prune(model_dir: str, patterns: Sequence[str], output: str, *,
          keep_langs: Sequence[str] = (), min_count: int = 1, checkpoint: str = "",
          batch_size: int = 1024, log=print) -> dict:
    """Prunes MODEL_DIR's vocabulary to a corpus and writes the smaller model to OUTPUT.

    Args:
      model_dir: str. A labse_tf model directory (converted, trained or pruned).
      patterns: translation-pair files or globs (see module doc).
      output: str. New model directory.
      keep_langs: languages whose pairs are used; default all in the corpus.
      min_count: int. Fewest uses in the corpus for a wordpiece to be kept.
      checkpoint: str. Checkpoint prefix; default MODEL_DIR's latest.
      batch_size: int. Sentences per tokenization call.
      log: callable. Progress and the report.

    Returns:
      The report (also written as OUTPUT/prune_vocab.json).
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    cfg, full, encoder, source_checkpoint = checkpoints.load_run(model_dir, checkpoint)
    sentences, langs = corpus_sentences(patterns, keep_langs, log)
    log(f"corpus: {len(sentences):,} sentences in {len(langs)} languages ({', '.join(langs)})")
    tokens = read_vocab(rundir.vocab_path(model_dir))
    counts = count_tokens(full, sentences, batch_size)
    kept = select_tokens(tokens, counts, corpus_characters(sentences, cfg.data.lowercase,
                                                           batch_size), min_count)
    pruned = prune_encoder(encoder, cfg.model, kept)
    written = checkpoints.write_run(cfg, [tokens[i] for i in kept], pruned, output)
    reloaded = Preprocessor(rundir.vocab_path(output), lowercase=cfg.data.lowercase)
    unchanged = unchanged_fraction(full, reloaded, kept, sentences, batch_size)
    report = {
        "model_dir": files.absolute(model_dir), "checkpoint": files.absolute(source_checkpoint),
        "output": files.absolute(written),
        "languages": list(langs), "sentences": len(sentences), "min_count": min_count,
        "vocab_before": len(tokens), "vocab_after": len(kept),
        "parameters_before": encoder.count_params(), "parameters_after": pruned.count_params(),
        "unknown_pieces": int(counts[full.unk_id]), "pieces": int(counts.sum()),
        "unchanged_tokenization": unchanged,
    }
    files.write_json(files.join(output, rundir.PRUNE_REPORT_FILE), report)
    log(f"vocabulary: {len(tokens):,} → {len(kept):,} tokens ({len(kept) / len(tokens):.1%})")
    log(f"parameters: {report['parameters_before']:,} → {report['parameters_after']:,} "
        f"({report['parameters_after'] / report['parameters_before']:.1%})")
    log(f"[UNK] pieces in the corpus: {report['unknown_pieces']:,} of {report['pieces']:,}")
    log(f"tokenization unchanged: {unchanged:.2%} of {len(sentences):,} corpus sentences")
    log(f"wrote {output} ({rundir.CONFIG_FILE}, {rundir.VOCAB_FILE}, "
        f"{rundir.CHECKPOINT_DIR}/{files.basename(written)}, {rundir.PRUNE_REPORT_FILE})")
    return report


def define_flags():
    flags.DEFINE_string("model_dir", None, "The labse_tf model directory to prune.")
    flags.DEFINE_string("checkpoint", "", "Checkpoint prefix; default MODEL_DIR's latest.")
    flags.DEFINE_multi_string("corpus", None, "Translation pairs whose wordpieces to keep (the "
                              "labse_tf.train formats); paths or globs, repeatable.")
    flags.DEFINE_integer("min_count", 1, "Fewest uses in the corpus for a wordpiece to be kept "
                         "(above 1, some corpus words tokenize differently).", lower_bound=1)
    flags.DEFINE_list("keep_langs", [], "Languages whose pairs are used; default all.")
    flags.DEFINE_string("output", None, "The pruned model directory to write (new).")
    flags.DEFINE_integer("batch_size", 1024, "Sentences per tokenization call.", lower_bound=1)
    for name in ("model_dir", "corpus", "output"):
        flags.mark_flag_as_required(name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    # DataError, a bad model directory, an existing output; OpError: gs:// and the like.
    with cli.exit_on(ValueError, OSError, tf.errors.OpError):
        prune(FLAGS.model_dir, FLAGS.corpus, FLAGS.output, keep_langs=FLAGS.keep_langs,
              min_count=FLAGS.min_count, checkpoint=FLAGS.checkpoint,
              batch_size=FLAGS.batch_size, log=cli.log)


if __name__ == "__main__":
    define_flags()
    app.run(main)
