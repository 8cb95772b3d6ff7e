r"""Inference throughput (sentences/s), strings in → embeddings out, at the `small` shape.

    python -m bench.inference_throughput                       # batch 64 and 256, ~4 minutes
    python -m bench.inference_throughput --batch_sizes=256 --windows=7

Contenders, all randomly initialised at the `small` shape (4 layers, hidden 256, 4 heads,
intermediate 1024), with one vocabulary learned from the shipped sample corpus, packing to
--seq_length tokens:
  labse_export       labse_tf.export.export_model's serving SavedModel, loaded and called
                     through evaluate.embed_fn_from_export (its `serving_default` signature:
                     text → embeddings, tokenization in the graph), as users and TF Serving
                     run it.
  labse_memory       the in-memory Preprocessor + encoder (evaluate.encoder_embed_fn, what
                     labse_tf.train evaluates with). Both it and the export cut the padding
                     to the batch's longest sentence (preprocessing.trim_padding) and compute
                     attention as 2-D MatMuls (labse_tf.model), so they should run alike.
  mg                 Model Garden: layers.BertTokenizer + layers.BertPackInputs (the
                     tensorflow-text BertTokenizer, lower_case=True) and networks.BertEncoder
                     inside models.DualEncoder(output="predictions", normalize=True), in one
                     tf.function, called the same way (a Python list of strings per batch
                     in, a NumPy array out).

Sentences are both sides of labse_tf/sample_data/*.tsv, repeated to fill the windows.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from bench import _common, _train_common  # noqa: E402
from labse_tf import data, evaluate, export, vocab  # noqa: E402
from labse_tf.model import build_encoder  # noqa: E402
from labse_tf.preprocessing import Preprocessor  # noqa: E402

NAME = "inference_throughput"
CONTENDERS = ("labse_export", "labse_memory", "mg")

FLAGS = flags.FLAGS
flags.DEFINE_list("contenders", list(CONTENDERS),
                  f"Which to run, of {list(CONTENDERS)}.")
flags.DEFINE_list("batch_sizes", ["64", "256"], "Sentences per call.")
flags.DEFINE_integer("seq_length", 32, "Packed length, [CLS] and [SEP] included.")
flags.DEFINE_integer("vocab_size", 8000, "Target size of the vocabulary learned from the "
                     "sample corpus (a corpus this small yields fewer).")
flags.DEFINE_integer("sentences_per_window", 512, "Sentences embedded per timed window.")
flags.DEFINE_integer("windows", 4, "Timed windows per contender and batch size.")
flags.DEFINE_integer("warmup", 1, "Untimed windows first.")
flags.DEFINE_string("output", _common.default_output(NAME), "Where to write the JSON results.")


def sample_sentences() -> list[str]:
    """Both sides of the shipped sample corpus (train and held-out)."""
    pairs, _ = data.read_pairs([data.sample_corpus_path(split) for split in ("train", "heldout")])
    _, src, tgt = pairs.flat()
    return src + tgt


def model_garden_embed_fn(vocab_file: str, vocab_size: int, cfg, batch_size: int):
    """Model Garden's tokenizer, packer and dual encoder as an EmbedFn (list → NumPy)."""
    from official.nlp.modeling import layers, models, networks

    m = cfg.model
    tokenizer = layers.BertTokenizer(vocab_file=vocab_file, lower_case=True)
    packer = layers.BertPackInputs(FLAGS.seq_length,
                                   special_tokens_dict=tokenizer.get_special_tokens_dict())
    network = networks.BertEncoder(
        vocab_size=vocab_size, hidden_size=m.hidden_dim, num_layers=m.num_layers,
        num_attention_heads=m.num_heads, inner_dim=m.intermediate_dim,
        max_sequence_length=m.max_sequence_length, type_vocab_size=2,
        output_dropout=m.dropout, attention_dropout=m.dropout, dict_outputs=True)
    model = models.DualEncoder(network, max_seq_length=FLAGS.seq_length, normalize=True,
                               output="predictions")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def run(strings):
        packed = packer([tokenizer(strings)])
        inputs = [packed[k] for k in ("input_word_ids", "input_mask", "input_type_ids")]
        return model(inputs, training=False)["pooled_output"]

    def embed_fn(sentences):
        return np.concatenate([np.asarray(run(tf.constant(sentences[i:i + batch_size])))
                               for i in range(0, len(sentences), batch_size)])

    return embed_fn


def main(argv):
    del argv
    _common.check_names("contenders", FLAGS.contenders, CONTENDERS)
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    log = _common.log
    machine = _common.announce_machine()
    keras.utils.set_random_seed(42)
    sentences = sample_sentences()
    workdir = tempfile.mkdtemp(prefix="labse_bench_")
    tick = time.perf_counter()
    vocab_file = vocab.write_vocab(vocab.build_vocab(sentences, FLAGS.vocab_size),
                                   os.path.join(workdir, "vocab.txt"))
    preprocessor = Preprocessor(vocab_file, lowercase=True, seq_length=FLAGS.seq_length)
    log(f"vocabulary: {preprocessor.vocab_size} tokens from {len(sentences)} sample sentences "
        f"({time.perf_counter() - tick:.1f} s)")
    cfg = _train_common.bench_config(vocab_size=preprocessor.vocab_size,
                                     seq_length=FLAGS.seq_length, global_batch=128)
    encoder = build_encoder(cfg.model, preprocessor.vocab_size, "fp32")

    tick = time.perf_counter()
    serving = export.export_model(preprocessor, encoder, os.path.join(workdir, "export"),
                                  seq_length=FLAGS.seq_length)["serving"]
    log(f"exported in {time.perf_counter() - tick:.1f} s: {serving}")
    builders = {
        "labse_export": lambda b: evaluate.embed_fn_from_export(serving, batch_size=b),
        "labse_memory": lambda b: evaluate.encoder_embed_fn(preprocessor, encoder, b),
        "mg": lambda b: model_garden_embed_fn(vocab_file, preprocessor.vocab_size, cfg, b),
    }

    n = FLAGS.sentences_per_window
    text = (sentences * (n // len(sentences) + 1))[:n]
    results = {}
    for batch_size in map(int, FLAGS.batch_sizes):
        log(f"batch {batch_size}: {n} sentences per window")
        contenders = {}
        for name in FLAGS.contenders:
            embed_fn = builders[name](batch_size)

            def window(embed_fn=embed_fn, name=name):
                out = embed_fn(text)
                if out.shape[0] != n or not np.all(np.isfinite(out)):
                    raise ValueError(f"{name}: {out.shape} embeddings for {n} sentences, or "
                                     "non-finite values")
                return n

            contenders[name] = window
        rates, cpu_rates = _common.interleaved(contenders, windows=FLAGS.windows,
                                               warmup=FLAGS.warmup, label="sentences")
        wanted = [("labse_export", "mg", None), ("labse_memory", "mg", None),
                  ("labse_export", "labse_memory", None)]
        results[str(batch_size)] = _common.rate_report(rates, cpu_rates, wanted,
                                                       unit="sentences/s")
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _common.write_results({
        "benchmark": NAME, "machine": machine,
        "setup": {"seq_length": FLAGS.seq_length, "vocab_size": preprocessor.vocab_size,
                  "sentences_per_window": n, "windows": FLAGS.windows, "warmup": FLAGS.warmup,
                  "model": "configs/small.yaml shape, random init, fp32"},
        "by_batch_size": results},
        FLAGS.output)


if __name__ == "__main__":
    app.run(main)
