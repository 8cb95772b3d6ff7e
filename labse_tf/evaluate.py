r"""Bitext retrieval evaluation from any embedding function, and its command line.

    python -m labse_tf.evaluate --model_dir=runs/demo --tatoeba_dir=../shared/data/tatoeba-dev
    python -m labse_tf.evaluate --model=runs/demo/export --tatoeba_dir=DIR \
        --langs=pol,ukr --margin=ratio --output=results.json

An embedding function (EmbedFn) maps sentences to L2-normalised embeddings. It is built from
an in-memory encoder (the training loop), from a training run's checkpoint, or from an
exported model, so all three are measured by the same code.

An export is loaded the TF Hub way (`hub.load`, with the tensorflow-text ops registered) from
its serving SavedModel, the one TF Serving answers with, rather than from the preprocessor
and encoder Hub modules, so the numbers are those of the deployed model, with the export's
own sequence length. Every embedding function batches sentences of similar length together
(`Embedder`). Retrieval searches neighbours through labse_tf.index: exactly for Tatoeba-size
sets, approximately for millions of candidates (`--index`).
"""

import time
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from labse_tf import baselines, checkpoints, cli, export, files, index, mining
from labse_tf.model import INPUT_NAMES, embed
# Importing preprocessing imports tensorflow_text, which registers the ops an exported
# preprocessor runs (hub.load needs them).
from labse_tf.preprocessing import Preprocessor, trim_padding

__all__ = ["EmbedFn", "Embedder", "embed_fn_from_export", "embed_fn_from_run",
           "encoder_embed_fn", "evaluate_tatoeba", "format_table", "iter_lines",
           "pair_retrieval", "read_lines", "read_tatoeba", "retrieval_accuracy",
           "serving_version_dir"]

FLAGS = flags.FLAGS

# Sentences in, float32 `[n, dim]` L2-normalised embeddings out.
EmbedFn = Callable[[Sequence[str]], np.ndarray]

# Seconds between progress lines while embedding a large set.
_PROGRESS_SECONDS = 10.0


class Embedder:
    """An EmbedFn that runs a model on batches of sentences grouped by length.

    Each batch is packed to its longest sentence, so batches of similar lengths pad less:
    the sentences are embedded shortest first, `batch_size` at a time, and the embeddings
    put back in the order given (bench/README.md section 7 measures the gain). A sentence's
    embedding does not depend on its batch, up to float32 rounding.

    Attributes:
      dim: int. Embedding width.
      batch_size: int. Sentences per model call.
    """

    def __init__(self, run_batch: Callable[[tf.Tensor], tf.Tensor], dim: int, batch_size: int,
                 log: Callable[[str], None] | None = None):
        self._run_batch, self.dim, self.batch_size, self._log = run_batch, dim, batch_size, log

    def batches(self, sentences: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (positions int64 `[b]`, embeddings float32 `[b, dim]`), shortest first."""
        order = np.argsort([len(s) for s in sentences], kind="stable")
        for start in range(0, len(order), self.batch_size):
            positions = order[start:start + self.batch_size]
            batch = tf.constant([sentences[i] for i in positions], tf.string)
            yield positions, np.asarray(self._run_batch(batch), np.float32)

    def __call__(self, sentences: Sequence[str]) -> np.ndarray:
        sentences = list(sentences)
        out = np.zeros([len(sentences), self.dim], np.float32)
        done, started = 0, time.monotonic()
        reported = started
        for positions, embeddings in self.batches(sentences):
            out[positions] = embeddings
            done += len(positions)
            now = time.monotonic()
            if self._log and now - reported > _PROGRESS_SECONDS:
                self._log(f"  embedded {done:,}/{len(sentences):,} sentences "
                          f"({done / (now - started):,.0f}/s)")
                reported = now
        return out


def encoder_embed_fn(preprocessor: Preprocessor, encoder: keras.Model, batch_size: int = 256,
                     log: Callable[[str], None] | None = None) -> Embedder:
    """An EmbedFn over an in-memory preprocessor and encoder (inference mode)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def run(strings):
        (packed,) = trim_padding(preprocessor(strings))
        return embed(encoder, packed, training=False)

    return Embedder(run, encoder.output["embedding"].shape[-1], batch_size, log)


def embed_fn_from_run(model_dir: str, checkpoint: str = "", *, batch_size: int = 256,
                      log: Callable[[str], None] | None = None) -> Embedder:
    """An EmbedFn of a training run's encoder at `checkpoint` (default: the latest)."""
    _, preprocessor, encoder, _ = checkpoints.load_run(model_dir, checkpoint)
    return encoder_embed_fn(preprocessor, encoder, batch_size, log)


def serving_version_dir(path: str) -> str:
    """The SavedModel directory for an export dir, its `serving/` dir, or a version dir.

    Exports keep TF Serving versions as EXPORT_DIR/serving/<integer>/; the highest version is
    the one TF Serving would serve, so it is the one chosen.
    """
    if files.exists(files.join(path, export.SAVED_MODEL_FILE)):
        return path
    parent = files.join(path, export.SERVING_DIR)
    parent = parent if files.isdir(parent) else path
    names = files.listdir(parent) if files.isdir(parent) else []
    versions = [int(n) for n in names if n.isdigit()
                and files.exists(files.join(parent, n, export.SAVED_MODEL_FILE))]
    if not versions:
        raise FileNotFoundError(
            f"{path}: not an export (expected EXPORT_DIR/serving/<version>/saved_model.pb, a "
            "serving directory of <version>/ SavedModels, or a SavedModel directory)")
    return files.join(parent, str(max(versions)))


def embed_fn_from_export(export_dir: str, *, batch_size: int = 256,
                         log: Callable[[str], None] | None = None) -> Embedder:
    """An EmbedFn over an export's serving model: what `serving_default` computes.

    The serving model's `serving_default` signature (`text` → `embeddings`) is the
    preprocessor and the encoder in one graph, packing every batch to the export's
    sequence length. This calls the same two functions of the same SavedModel with the
    all-padding columns cut between them, so batches of short sentences run faster and
    the embeddings are the signature's (tested to 1e-6).

    Args:
      export_dir: str. An export directory, its `serving/` directory or one version of it.
      batch_size: int. Sentences per call.
      log: optional progress printer.
    """
    # Imported here: tensorflow_hub loads tf_keras, which nothing else in training needs.
    import tensorflow_hub as hub

    path = serving_version_dir(export_dir)
    model = hub.load(path)
    if export.SIGNATURE_KEY not in model.signatures:
        raise ValueError(f"{path}: no {export.SIGNATURE_KEY} signature (has "
                         f"{sorted(model.signatures)}); is it the serving model of an export?")
    signature = model.signatures[export.SIGNATURE_KEY]
    inputs, outputs = signature.structured_input_signature[1], signature.structured_outputs
    if set(inputs) != {export.SERVING_INPUT} or export.SERVING_OUTPUT not in outputs:
        raise ValueError(f"{path}: {export.SIGNATURE_KEY} maps {sorted(inputs)} to "
                         f"{sorted(outputs)}, expected {[export.SERVING_INPUT]} to "
                         f"{[export.SERVING_OUTPUT]}")
    if not (hasattr(model, "preprocessor") and hasattr(model, "encoder")):
        raise ValueError(f"{path}: a serving model without the preprocessor and encoder "
                         "objects that labse_tf.export saves with it")
    hub_to_keras_hub = dict(zip(export.HUB_INPUT_NAMES, INPUT_NAMES))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def run_batch(strings):
        # Through `model`, so the loaded variables live as long as this function.
        packed = {hub_to_keras_hub[k]: v for k, v in model.preprocessor(strings).items()}
        (packed,) = trim_padding(packed)
        inputs = {hub: packed[name] for hub, name in hub_to_keras_hub.items()}
        return model.encoder(inputs, training=False)["default"]

    return Embedder(run_batch, outputs[export.SERVING_OUTPUT].shape[-1], batch_size, log)


def retrieval_accuracy(a: np.ndarray, b: np.ndarray, *, margin: str = "none", k: int = 4,
                       index_options: index.IndexOptions = index.IndexOptions(),
                       log: Callable[[str], None] = lambda msg: None) -> tuple[float, float]:
    """Retrieval accuracy both ways for aligned rows a[i] ↔ b[i].

    Args:
      a: float `[n, dim]`.
      b: float `[n, dim]`.
      margin: str. "none": nearest neighbour by cosine; "ratio": the best ratio margin
        among the k nearest neighbours (see labse_tf.mining).
      k: int. Neighbourhood size of the ratio margin.
      index_options: index.IndexOptions. The nearest-neighbour search (default: exact up
        to index.IndexOptions.flat_max_pairs, approximate beyond).
      log: progress printer.

    Returns:
      (a→b, b→a): fraction of rows whose match on the other side is its pair.
    """
    k = 1 if margin == "none" else k
    a2b, b2a = index.knn_both_ways(a, b, k, index_options, log=log)
    found = mining.matches(*a2b, *b2a, margin=margin)
    gold = np.arange(len(a))
    return float(np.mean(found.x2y == gold)), float(np.mean(found.y2x == gold))


def pair_retrieval(embed_fn: EmbedFn, src: Sequence[str], tgt: Sequence[str], *,
                   margin: str = "none", k: int = 4,
                   index_options: index.IndexOptions = index.IndexOptions()) -> dict:
    """Retrieval accuracy within a set of held-out pairs (src→tgt, tgt→src, mean)."""
    s2t, t2s = retrieval_accuracy(embed_fn(src), embed_fn(tgt), margin=margin, k=k,
                                  index_options=index_options)
    return {"src_to_tgt": s2t, "tgt_to_src": t2s, "mean": (s2t + t2s) / 2, "pairs": len(src)}


def iter_lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or .gz, any filesystem) without their line ends,
    one at a time; bad bytes become U+FFFD."""
    with files.open_file(path, "rb") as f:
        for raw in f:
            yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


def read_lines(path: str) -> list[str]:
    """All of `iter_lines(path)`."""
    return list(iter_lines(path))


def read_tatoeba(directory: str, langs: Sequence[str] = ()) -> dict:
    """Reads `tatoeba.<xx>-eng.<xx>` / `tatoeba.<xx>-eng.eng` pairs: {lang: (xx, eng)}.

    Args:
      directory: str. A directory in the LASER Tatoeba layout (any filesystem).
      langs: language codes to read; default every language found.
    """
    found = sorted(files.basename(p).split(".")[1].split("-")[0]
                   for p in files.glob(files.join(directory, "tatoeba.*-eng.eng")))
    if not found:
        raise FileNotFoundError(f"{directory}: no tatoeba.<lang>-eng.eng files")
    missing = [l for l in langs if l not in found]
    if missing:
        raise FileNotFoundError(f"{directory}: no Tatoeba files for {missing} (found {found})")
    result = {}
    for lang in langs or found:
        base = files.join(directory, f"tatoeba.{lang}-eng")
        xx, eng = read_lines(f"{base}.{lang}"), read_lines(f"{base}.eng")
        if len(xx) != len(eng):
            raise ValueError(f"{base}.{lang} has {len(xx)} lines but {base}.eng has {len(eng)}")
        result[lang] = (xx, eng)
    return result


def evaluate_tatoeba(embed_fn: EmbedFn, tatoeba: dict, *, margin: str = "none", k: int = 4,
                     index_options: index.IndexOptions = index.IndexOptions(),
                     log: Callable[[str], None] = lambda msg: None) -> dict:
    """Tatoeba retrieval accuracy per language and averaged over languages.

    Args:
      embed_fn: EmbedFn.
      tatoeba: {lang: (xx sentences, eng sentences)}, as from `read_tatoeba`.
      margin, k, index_options: see `retrieval_accuracy`.
      log: progress printer.

    Returns:
      {mean_accuracy, mean_xx_to_eng, mean_eng_to_xx, languages: {lang: {xx_to_eng,
      eng_to_xx, mean, pairs}}}; accuracies are fractions, means are over languages.
    """
    languages = {}
    for lang, (xx, eng) in tatoeba.items():
        log(f"embedding {lang}: {len(xx):,} pairs")
        scores = pair_retrieval(embed_fn, xx, eng, margin=margin, k=k,
                                index_options=index_options)
        languages[lang] = {"xx_to_eng": scores["src_to_tgt"], "eng_to_xx": scores["tgt_to_src"],
                           "mean": scores["mean"], "pairs": scores["pairs"]}
    average = lambda key: float(np.mean([v[key] for v in languages.values()]))
    return {"mean_accuracy": average("mean"), "mean_xx_to_eng": average("xx_to_eng"),
            "mean_eng_to_xx": average("eng_to_xx"), "languages": languages}


def format_table(results: dict) -> str:
    """`evaluate_tatoeba` results as a fixed-width table in percent."""
    lines = [f"{'language':<10}{'pairs':>8}{'xx→eng':>9}{'eng→xx':>9}{'mean':>9}"]
    for lang, v in results["languages"].items():
        lines.append(f"{lang:<10}{v['pairs']:>8,}{v['xx_to_eng']:>9.1%}{v['eng_to_xx']:>9.1%}"
                     f"{v['mean']:>9.1%}")
    lines.append(f"{'average':<10}{'':>8}{results['mean_xx_to_eng']:>9.1%}"
                 f"{results['mean_eng_to_xx']:>9.1%}{results['mean_accuracy']:>9.1%}")
    return "\n".join(lines)


def define_model_flags(*, required: bool = True, baseline: bool = True):
    """The flags that choose the model to embed with (shared with labse_tf.mine and .embed).

    Args:
      required: bool. Whether one of them must be given (labse_tf.mine needs none when
        both sides come embedded already).
      baseline: bool. Whether --trigram_baseline is offered.
    """
    flags.DEFINE_string("model", None, "An export: EXPORT_DIR (its highest serving/<version>), "
                        "a serving/ directory, or one SavedModel version directory.")
    flags.DEFINE_string("model_dir", None, "A labse_tf.train run directory; its latest "
                        "checkpoint is used unless --checkpoint is given.")
    flags.DEFINE_string("checkpoint", "", "With --model_dir: a checkpoint prefix, e.g. "
                        "RUN/best/ckpt-300.")
    flags.DEFINE_integer("batch_size", 256, "Sentences per embedding call.", lower_bound=1)
    choices = ["model", "model_dir"]
    if baseline:
        flags.DEFINE_bool("trigram_baseline", None, "Instead of a model, embed with character "
                          "trigram TF-IDF (no training; IDF counted on the input sentences).")
        choices.append("trigram_baseline")
    flags.mark_flags_as_mutual_exclusive(choices, required=required)


def embed_fn_from_flags(log: Callable[[str], None], corpus: Sequence[str] = ()
                        ) -> tuple[EmbedFn, str]:
    """The EmbedFn that the model flags choose, and the checkpoint or SavedModel it uses.

    `corpus` (all sentences to be embedded) fits the trigram baseline's IDF.
    """
    if "trigram_baseline" in FLAGS and FLAGS.trigram_baseline:
        return baselines.CharNgramTfidf(corpus), "char-trigram TF-IDF baseline"
    if FLAGS.model_dir:
        source = checkpoints.find_checkpoint(FLAGS.model_dir, FLAGS.checkpoint)
        embed_fn = embed_fn_from_run(FLAGS.model_dir, source, batch_size=FLAGS.batch_size, log=log)
    else:
        source = serving_version_dir(FLAGS.model)
        embed_fn = embed_fn_from_export(source, batch_size=FLAGS.batch_size, log=log)
    log(f"model: {source}")
    return embed_fn, source


def _define_flags():
    define_model_flags()
    flags.DEFINE_string("tatoeba_dir", None, "Directory of tatoeba.<lang>-eng.<lang> and "
                        "tatoeba.<lang>-eng.eng files (line-aligned).", required=True)
    flags.DEFINE_list("langs", [], "Languages to evaluate; default every one in --tatoeba_dir.")
    flags.DEFINE_enum("margin", "none", mining.MARGINS, "none: nearest neighbour by cosine; "
                      "ratio: the best ratio margin among the --k nearest neighbours.")
    flags.DEFINE_integer("k", 4, "Neighbourhood size of the ratio margin.", lower_bound=1)
    index.define_flags()
    flags.adopt_module_key_flags(index)  # so that --help lists --index, --nprobe, ...
    flags.DEFINE_string("output", "tatoeba_results.json", "Where to write the results as JSON "
                        "(any filesystem).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with cli.exit_on(FileNotFoundError, ValueError):
        tatoeba = read_tatoeba(FLAGS.tatoeba_dir, FLAGS.langs)
        embed_fn, source = embed_fn_from_flags(
            cli.log, [s for pair in tatoeba.values() for side in pair for s in side])
    results = {"model": source, "tatoeba_dir": files.absolute(FLAGS.tatoeba_dir),
               "margin": FLAGS.margin, "k": FLAGS.k, "index": FLAGS.index,
               **evaluate_tatoeba(embed_fn, tatoeba, margin=FLAGS.margin, k=FLAGS.k,
                                  index_options=index.options_from_flags(), log=cli.log)}
    files.write_json(FLAGS.output, results)
    cli.log(format_table(results))
    cli.log(f"results: {files.absolute(FLAGS.output)}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
