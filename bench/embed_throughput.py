r"""labse_tf.embed's sentences/s on real text against the order labse_tf.evaluate used to run.

    python -m bench.embed_throughput                     # ntrex dev sentences, ~5 minutes
    python -m bench.embed_throughput --text=DEV_DIR/deu.tsv --batch_size=64

Contenders, on the `small` shape (4 layers, hidden 256), randomly initialised, with one
vocabulary learned from the shipped sample corpus, on the same window of real sentences:
  memory_grouped   the in-memory encoder through evaluate.Embedder: the window sorted by
                   length, batches packed to their longest sentence (what labse_tf.embed
                   and labse_tf.evaluate now run on a training run's checkpoint)
  memory_order     the same encoder, batches in file order (each batch still trimmed to
                   its longest sentence): labse_tf.evaluate before length grouping
  export_grouped   the exported serving model through evaluate.embed_fn_from_export: its
                   preprocessor and encoder, trimmed and grouped (labse_tf.embed --model)
  export_signature the export's serving_default signature, batches in file order, each
                   padded to the export's sequence length: labse_tf.evaluate --model before
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from bench import _common, _train_common  # noqa: E402
from labse_tf import data, evaluate, export, files, vocab  # noqa: E402
from labse_tf.model import build_encoder  # noqa: E402
from labse_tf.preprocessing import Preprocessor  # noqa: E402

NAME = "embed_throughput"
CONTENDERS = ("memory_grouped", "memory_order", "export_grouped", "export_signature")

FLAGS = flags.FLAGS
flags.DEFINE_list("contenders", list(CONTENDERS), f"Which to run, of {list(CONTENDERS)}.")
flags.DEFINE_list("text", [os.path.join(_common.REPO_ROOT, "..", "shared", "data", "dev",
                                        "ntrex", "*.tsv")],
                  "Pair files (globs) in a format labse_tf.train reads; both sides are used.")
flags.DEFINE_integer("sentences_per_window", 2048, "Sentences embedded per timed window.")
flags.DEFINE_integer("batch_size", 256, "Sentences per call.")
flags.DEFINE_integer("seq_length", 64, "The export's (and the packer's) sequence length.")
flags.DEFINE_integer("windows", 4, "Timed windows per contender.")
flags.DEFINE_integer("warmup", 1, "Untimed windows first.")
flags.DEFINE_string("output", _common.default_output(NAME), "Where to write the JSON results.")


def real_sentences(limit: int) -> list[str]:
    """Up to `limit` sentences, both sides of the pairs of --text's first files, in order."""
    sentences = []
    for path in files.expand(p for pattern in FLAGS.text for p in files.glob(pattern)):
        pairs, _ = data.read_pairs([path])
        _, src, tgt = pairs.flat()
        sentences += [s for pair in zip(src, tgt) for s in pair]
        if len(sentences) >= limit:
            break
    return sentences[:limit]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    _common.check_names("contenders", FLAGS.contenders, CONTENDERS)
    machine = _common.announce_machine()
    sentences = real_sentences(FLAGS.sentences_per_window)
    _common.log(f"{len(sentences):,} sentences, mean {sum(map(len, sentences)) / len(sentences):.0f}"
                " characters")
    workdir = tempfile.mkdtemp(prefix="embed_throughput_")
    pairs, _ = data.read_pairs([data.sample_corpus_path("train")])
    _, src, tgt = pairs.flat()
    vocab_file = vocab.write_vocab(vocab.build_vocab(src + tgt, 8000),
                                   os.path.join(workdir, "vocab.txt"))
    preprocessor = Preprocessor(vocab_file, seq_length=FLAGS.seq_length)
    cfg = _train_common.bench_config(vocab_size=preprocessor.vocab_size,
                                     seq_length=FLAGS.seq_length, global_batch=FLAGS.batch_size)
    keras.utils.set_random_seed(0)
    encoder = build_encoder(cfg.model, preprocessor.vocab_size)
    serving = export.export_model(preprocessor, encoder, os.path.join(workdir, "export"),
                                  seq_length=FLAGS.seq_length)["serving"]
    memory = evaluate.encoder_embed_fn(preprocessor, encoder, FLAGS.batch_size)
    exported = evaluate.embed_fn_from_export(serving, batch_size=FLAGS.batch_size)
    import tensorflow_hub as hub
    signature = hub.load(serving).signatures[export.SIGNATURE_KEY]
    b = FLAGS.batch_size
    batches = [sentences[i:i + b] for i in range(0, len(sentences), b)]

    def in_order(embed_fn):
        # One call per batch of consecutive sentences: grouping within one batch changes
        # nothing, so this is the order evaluate ran before grouping.
        return lambda: sum(len(embed_fn(batch)) for batch in batches)

    contenders = {
        "memory_grouped": lambda: len(memory(sentences)),
        "memory_order": in_order(memory),
        "export_grouped": lambda: len(exported(sentences)),
        "export_signature": lambda: sum(len(signature(**{export.SERVING_INPUT: tf.constant(
            batch)})[export.SERVING_OUTPUT]) for batch in batches),
    }
    rates, cpu_rates = _common.interleaved({n: contenders[n] for n in FLAGS.contenders},
                                           windows=FLAGS.windows, warmup=FLAGS.warmup,
                                           label="sentences")
    report = _common.rate_report(
        rates, cpu_rates, [("memory_grouped", "memory_order", "> 1"),
                           ("export_grouped", "export_signature", "> 1")], unit="sentences/s")
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _common.write_results({"benchmark": NAME, "machine": machine,
                           "setup": {"sentences": len(sentences), "text": FLAGS.text,
                                     "batch_size": b, "seq_length": FLAGS.seq_length,
                                     "shape": "small, random init"},
                           **report}, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
