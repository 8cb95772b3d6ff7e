r"""Exports a trained encoder as TF Hub and TF Serving SavedModels.

    python -m labse_tf.export --model_dir=runs/demo            # → runs/demo/export
    python -m labse_tf.export --model_dir=DIR --export_dir=OUT --seq_length=128 \
        --checkpoint=DIR/checkpoints/ckpt-300

What EXPORT_DIR holds:

    preprocessor/       TF Hub BERT preprocessor: strings → {input_word_ids, input_mask,
                        input_type_ids} (also as signature `serving_default`); .tokenize
                        (.get_special_tokens_dict); .bert_pack_inputs(segments, seq_length)
    encoder/            TF Hub reusable SavedModel: __call__(inputs, training) → {default,
                        pooled_output, sequence_output, encoder_outputs}; fine-tunable;
                        signature `serving_default` on the three id tensors; vocab_file,
                        do_lower_case
    serving/<version>/  TF Serving: signature `serving_default`, text [batch] → embeddings
                        [batch, dim], with assets.extra/tf_serving_warmup_requests

The preprocessor and serving models run tensorflow-text ops (`import tensorflow_text`
before loading them); the encoder needs only TensorFlow. Each model's `serve` is its
signature's function, `keras.layers.TFSMLayer`'s default endpoint.
This file is the only place the TF Hub input names appear; the package uses keras-hub names.
Export rebuilds nothing from the training code: the run's config and checkpoint suffice.
"""

import keras
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from labse_tf import checkpoints, cli, files, rundir
from labse_tf.model import INPUT_NAMES
from labse_tf.preprocessing import Preprocessor, trim_padding

__all__ = ["ENCODER_OUTPUTS", "HUB_INPUT_NAMES", "MODEL_NAME", "SAVED_MODEL_FILE",
           "SERVING_DIR", "SERVING_INPUT", "SERVING_OUTPUT", "SIGNATURE_KEY", "STAGING_DIR",
           "WARMUP_FILE",
           "HubEncoder", "HubPreprocessor", "ServingModel", "export_model", "next_version"]

FLAGS = flags.FLAGS

# The TF Hub BERT input names, in the order of model.INPUT_NAMES (token_ids, padding_mask,
# segment_ids).
HUB_INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")
_HUB_TO_KERAS_HUB = dict(zip(HUB_INPUT_NAMES, INPUT_NAMES))

SIGNATURE_KEY = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # "serving_default"
# The input of the serving and preprocessor signatures, and the serving model's output.
SERVING_INPUT = "text"
SERVING_OUTPUT = "embeddings"
# What the encoder's signature returns, as TF Serving clients of BERT encoders read it.
ENCODER_OUTPUTS = ("default", "pooled_output", "sequence_output")
# The model name in export/models.config and in the warm-up requests.
MODEL_NAME = "labse"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# TF Serving loads a version directory only once this file is in it.
SAVED_MODEL_FILE = "saved_model.pb"
# Under EXPORT_DIR: where the models are written before they are published.
STAGING_DIR = ".staging"
# Under EXPORT_DIR: the TF Serving model, one <version>/ SavedModel each.
SERVING_DIR = "serving"
# Warm-up batches of size 1 and 4: short, empty and long inputs, several scripts.
_WARMUP_BATCHES = (
    ("Hello world.",),
    ("How are you?", "", "Wie geht es dir?", "Это длинное предложение. " * 40),
)


def _check_text(text: tf.Tensor) -> tf.Tensor:
    """`text` if it is a `[batch]` vector, else an error naming both shapes, at run time.

    A signature's input shape is not enforced: TF Serving (or a Python call) feeds whatever
    shape a request has, and the tokenizer would flatten a `[2, 2]` batch into 4 sentences.
    A rank check would be folded away (the graph "knows" the rank); EnsureShape is not.
    """
    return tf.ensure_shape(text, [None])


class _Tokenizer(tf.Module):
    """The preprocessor's `tokenize`: a callable with `get_special_tokens_dict()`, as in the
    TF Hub BERT preprocessors."""

    def __init__(self, preprocessor: Preprocessor):
        super().__init__(name="tokenize")
        self.preprocessor = preprocessor

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings):
        """`[batch]` strings → int32 wordpiece ids `[batch, (words), (pieces)]`."""
        return self.preprocessor.tokenize(strings)

    @tf.function(input_signature=[])
    def get_special_tokens_dict(self):
        """Scalar int32 ids under the TF Hub names: vocab_size, start_of_sequence_id ([CLS]),
        end_of_segment_id ([SEP]), padding_id ([PAD]), mask_id ([MASK])."""
        p = self.preprocessor
        return {"vocab_size": p.vocab_size, "start_of_sequence_id": p.cls_id,
                "end_of_segment_id": p.sep_id, "padding_id": p.pad_id, "mask_id": p.mask_id}


class HubPreprocessor(tf.Module):
    """The TF Hub BERT preprocessor interface over a `Preprocessor`.

    Renames the packed outputs to the TF Hub names and fixes the traced signatures; the
    tokenization itself is the `Preprocessor`'s, so training and serving agree.
    """

    def __init__(self, preprocessor: Preprocessor, seq_length: int, max_seq_length: int):
        """Traces the calls a TF Hub preprocessor offers.

        Args:
          preprocessor: Preprocessor. The run's tokenizer (holds the vocabulary asset).
          seq_length: int. Packed length of the root call and of `bert_pack_inputs` when
            called without `seq_length`.
          max_seq_length: int. The encoder's max_sequence_length: the longest packing
            `bert_pack_inputs` accepts.
        """
        super().__init__(name="preprocessor")
        self.preprocessor = preprocessor
        self.tokenize = _Tokenizer(preprocessor)
        self.seq_length = seq_length
        self.max_seq_length = max_seq_length
        # Segments as `tokenize` returns them, or with words merged (`.merge_dims(-2, -1)`).
        for rank in (2, 3):
            for num_segments in (1, 2):
                segments = [tf.RaggedTensorSpec([None] * rank, tf.int32)] * num_segments
                self.bert_pack_inputs.get_concrete_function(segments)
                self.bert_pack_inputs.get_concrete_function(segments,
                                                            tf.TensorSpec([], tf.int32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def __call__(self, text):
        """`[batch]` strings → int32 `[batch, seq_length]` packed inputs (Hub names)."""
        return self.bert_pack_inputs([self.tokenize(_check_text(text))])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(self, text):
        """The root call as the `serving_default` signature and `keras.layers.TFSMLayer`'s
        default endpoint."""
        return self(text)

    @tf.function
    def bert_pack_inputs(self, segments, seq_length=None):
        """One or two tokenized segments → `[CLS] a [SEP] (b [SEP])`, truncated round-robin.

        Args:
          segments: list of 1 or 2 int32 tf.RaggedTensor, `[batch, (words), (pieces)]` as
            `tokenize` returns them or `[batch, (pieces)]`.
          seq_length: scalar int32 tensor. Packed length, at most the encoder's
            max_sequence_length (else an error naming both); default the export's.

        Returns:
          dict of int32 `[batch, seq_length]`: input_word_ids, input_mask, input_type_ids.
        """
        seq_length = self.seq_length if seq_length is None else seq_length
        # Here, not in the encoder: its position table ends at max_seq_length.
        ok = tf.debugging.Assert(seq_length <= self.max_seq_length, [tf.strings.format(
            "bert_pack_inputs: seq_length={} is more than the encoder accepts "
            f"(max_sequence_length={self.max_seq_length})", [seq_length])])
        with tf.control_dependencies([ok]):
            packed = self.preprocessor.bert_pack_inputs(segments, tf.identity(seq_length))
        return {hub: packed[name] for hub, name in _HUB_TO_KERAS_HUB.items()}


class HubEncoder(tf.train.Checkpoint):
    """A Keras encoder as a TF Hub reusable SavedModel object.

    A `tf.train.Checkpoint`, not a `tf.Module`, because the convention needs `variables` and
    `trainable_variables` as saved attributes, and `tf.Module` reserves those names for
    computed properties. Keras 3 variables are not `tf.Variable`s: their `.value` is.

    Attributes:
      variables: list of tf.Variable. Every encoder variable (dropout seed states included).
      trainable_variables: list of tf.Variable. What fine-tuning updates.
      regularization_losses: list. Empty: the encoder has no weight regularisers (weight
        decay, if any, lives in the training optimizer).
      vocab_file: tf.saved_model.Asset. The vocabulary, as LaBSE's TF Hub encoder has it.
      do_lower_case: tf.Variable. bool, not trainable: whether the tokenizer case-folds.
    """

    def __init__(self, encoder: keras.Model, preprocessor: Preprocessor):
        """Traces `__call__` for training=False and training=True.

        Args:
          encoder: keras.Model. From model.build_encoder (any precision).
          preprocessor: Preprocessor. Its vocabulary and casing are attached.
        """
        super().__init__()
        # A closure, so the Keras model itself is not tracked and saved: only its variables.
        self._forward = lambda inputs, training: encoder(inputs, training=training)
        self._max_length = encoder.get_layer("position_embedding").sequence_length
        self.variables = [v.value for v in encoder.variables]
        self.trainable_variables = [v.value for v in encoder.trainable_variables]
        self.regularization_losses = []
        self.vocab_file = preprocessor.vocab_file
        self.do_lower_case = tf.Variable(preprocessor.lowercase, trainable=False,
                                         name="do_lower_case")
        spec = {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in HUB_INPUT_NAMES}
        for training in (False, True):
            self.__call__.get_concrete_function(spec, training=training)

    @tf.function
    def __call__(self, inputs, training=False):
        """Encodes packed inputs.

        Args:
          inputs: dict of int32 `[batch, seq_length]`: input_word_ids, input_mask,
            input_type_ids (as the preprocessor returns them).
          training: bool. True applies dropout (fine-tuning); False for inference.

        Returns:
          dict of float32: `default` and `pooled_output` (`[batch, dim]`, the L2-normalised
          sentence embedding), `sequence_output` (`[batch, seq_length, dim]`, last layer's
          token states) and `encoder_outputs` (list of `[batch, seq_length, dim]`, every
          transformer layer's token states, the last equal to sequence_output).
        """
        _check_inputs(inputs)
        # Checked before the encoder runs: past the position table the error would be obscure.
        too_long = tf.debugging.assert_less_equal(
            tf.shape(inputs["input_word_ids"])[1], self._max_length,
            message=f"encoder: seq_length must be at most max_sequence_length={self._max_length}")
        with tf.control_dependencies([too_long]):
            keras_inputs = {name: tf.identity(inputs[hub])
                            for hub, name in _HUB_TO_KERAS_HUB.items()}
        outputs = self._forward(keras_inputs, training)
        embedding = tf.cast(outputs["embedding"], tf.float32)
        return {"default": embedding, "pooled_output": embedding,
                "sequence_output": tf.cast(outputs["sequence_output"], tf.float32),
                "encoder_outputs": [tf.cast(x, tf.float32) for x in outputs["encoder_outputs"]]}

    @tf.function(input_signature=[{name: tf.TensorSpec([None, None], tf.int32, name=name)
                                   for name in HUB_INPUT_NAMES}])
    def serve(self, inputs):
        """Inference for TF Serving (`serving_default`, the inputs by name) and for
        `keras.layers.TFSMLayer` (its default endpoint, the inputs as one dict).

        Returns:
          dict of float32: ENCODER_OUTPUTS (a signature cannot return the list
          `encoder_outputs`).
        """
        outputs = self(inputs, training=False)
        return {name: outputs[name] for name in ENCODER_OUTPUTS}


def _check_inputs(inputs) -> None:
    """Raises a TypeError naming the expected and actual keys, dtype and rank."""
    if not isinstance(inputs, dict) or sorted(inputs) != sorted(HUB_INPUT_NAMES):
        got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise TypeError(f"encoder: expected a dict with keys {list(HUB_INPUT_NAMES)}, got {got}")
    for name in HUB_INPUT_NAMES:
        x = inputs[name]
        if x.dtype != tf.int32 or x.shape.rank != 2:
            raise TypeError(f"encoder: input {name!r} must be tf.int32 of rank 2 [batch, "
                            f"seq_length], got {x.dtype.name} of rank {x.shape.rank} "
                            f"(shape {x.shape})")


class ServingModel(tf.Module):
    """Text → embedding in one graph, for TF Serving and `keras.layers.TFSMLayer`."""

    def __init__(self, preprocessor: HubPreprocessor, encoder: HubEncoder):
        super().__init__(name="serving")
        self.preprocessor = preprocessor
        self.encoder = encoder

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(self, text):
        """`[batch]` strings → {embeddings: float32 `[batch, dim]`, L2-normalised}; another
        rank is an error naming its shape."""
        # Cut to the batch's longest sentence, as training and evaluation do: padding costs
        # encoder time and changes no embedding.
        (packed,) = trim_padding(self.preprocessor(text), mask="input_mask")
        return {SERVING_OUTPUT: self.encoder(packed, training=False)["default"]}


def next_version(serving_dir: str) -> int:
    """One more than the highest integer version in `serving_dir` (1 when there is none).

    TF Serving serves the highest version by default, so a new export takes over.
    """
    if not files.isdir(serving_dir):
        return 1
    return max((int(name) for name in files.listdir(serving_dir) if name.isdigit()),
               default=0) + 1


def _write_warmup(path: str) -> None:
    """Writes TF Serving warm-up requests: PredictionLog records in a TFRecord file."""
    files.makedirs(files.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for batch in _WARMUP_BATCHES:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name=SIGNATURE_KEY))
            request.inputs[SERVING_INPUT].CopyFrom(tf.make_tensor_proto(list(batch), tf.string))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _files_under(directory: str) -> list[str]:
    """Every file below `directory`, as `/`-joined paths relative to it."""
    found = []
    for name in files.listdir(directory):
        path = files.join(directory, name)
        if files.isdir(path):
            found += [f"{name}/{sub}" for sub in _files_under(path)]
        elif files.exists(path):  # TF's ram:// also lists assets.extra's tail in assets/
            found.append(name)
    return found


def _publish(staging: str, path: str) -> None:
    """Moves a complete SavedModel from `staging` to `path`, replacing what is there.

    TF Serving's poller aspires every integer-named directory it lists, whatever it holds,
    and its loader refuses (and later retries) one without saved_model.pb. A local
    directory rename is atomic. On an object store a directory exists as soon as its first
    object does, and a rename copies object by object, so a poller could load a version
    whose variables are still being copied: there the files are copied with saved_model.pb
    last (each object appears whole), and an old model loses its saved_model.pb first.
    """
    if files.exists(path):
        files.remove(files.join(path, SAVED_MODEL_FILE))
        files.rmtree(path)
    if not files.is_url(path):
        files.makedirs(files.dirname(path))
        files.rename(staging, path)
        return
    for name in sorted(_files_under(staging), key=lambda name: name == SAVED_MODEL_FILE):
        files.copy(files.join(staging, name), files.join(path, name))
    files.rmtree(staging)


def export_model(preprocessor: Preprocessor, encoder: keras.Model, export_dir: str, *,
                 seq_length: int, version: int | None = None) -> dict[str, str]:
    """Writes the preprocessor, encoder and serving SavedModels.

    Each is saved under EXPORT_DIR/.staging first, then published (see `_publish`), so a
    model server never loads a half-written version, on a local disk or on GCS. An
    interrupted export leaves EXPORT_DIR/.staging (removed by the next export) and at
    worst a serving version without saved_model.pb, which never loads.

    Args:
      preprocessor: Preprocessor. The tokenizer the encoder was trained with.
      encoder: keras.Model. From model.build_encoder, trained.
      export_dir: str. Output directory, local or a URL (`gs://...`).
      seq_length: int. Default packed length of the preprocessor and of serving; at most
        the encoder's max_sequence_length.
      version: int. Serving version directory; default `next_version(EXPORT_DIR/serving)`.
        An existing version is never overwritten (a server may be serving it).

    Returns:
      {"preprocessor": path, "encoder": path, "serving": path} of what was written.
    """
    max_length = encoder.get_layer("position_embedding").sequence_length
    if not 3 <= seq_length <= max_length:
        raise ValueError(f"seq_length must be in [3, {max_length}] (the encoder's "
                         f"max_sequence_length), got {seq_length}")
    serving_dir = files.join(export_dir, SERVING_DIR)
    version = next_version(serving_dir) if version is None else version
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    paths = {"preprocessor": files.join(export_dir, "preprocessor"),
             "encoder": files.join(export_dir, "encoder"),
             "serving": files.join(serving_dir, str(version))}
    if files.exists(paths["serving"]):
        raise FileExistsError(f"{paths['serving']}: serving version {version} exists; "
                              "choose another version or leave it to the default")
    hub_preprocessor = HubPreprocessor(preprocessor, seq_length, max_length)
    hub_encoder = HubEncoder(encoder, preprocessor)
    serving = ServingModel(hub_preprocessor, hub_encoder)
    staging_dir = files.join(export_dir, STAGING_DIR)
    files.rmtree(staging_dir)  # what an interrupted export left
    staging = {kind: files.join(staging_dir, kind) for kind in paths}
    tf.saved_model.save(hub_preprocessor, staging["preprocessor"],
                        signatures={SIGNATURE_KEY: hub_preprocessor.serve})
    tf.saved_model.save(hub_encoder, staging["encoder"],
                        signatures={SIGNATURE_KEY: hub_encoder.serve})
    tf.saved_model.save(serving, staging["serving"], signatures={SIGNATURE_KEY: serving.serve})
    _write_warmup(files.join(staging["serving"], WARMUP_FILE))
    for kind, path in paths.items():
        _publish(staging[kind], path)
    files.rmtree(staging_dir)
    return paths


def define_flags():
    """The command line's flags (not at import: train.py has flags of the same names)."""
    flags.DEFINE_string("model_dir", None, "Training run directory (config.yaml, vocab.txt, "
                        "checkpoints/).")
    flags.DEFINE_string("export_dir", "", "Where to write; default MODEL_DIR/export.")
    flags.DEFINE_integer("seq_length", 0, "Default packed length of the preprocessor and the "
                         "serving model (users may pick another via bert_pack_inputs); 0: the "
                         "run's data.seq_length.")
    flags.DEFINE_string("checkpoint", "", "Checkpoint prefix to export, e.g. "
                        "MODEL_DIR/best/ckpt-300; default the latest in MODEL_DIR/checkpoints.")
    flags.DEFINE_integer("version", 0, "Serving version directory; 0: one more than the "
                         "highest in EXPORT_DIR/serving.")
    flags.mark_flag_as_required("model_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # OpError: gs:// and the like
    with cli.exit_on(OSError, ValueError, tf.errors.OpError):
        _, preprocessor, encoder, checkpoint = checkpoints.load_run(
            FLAGS.model_dir, FLAGS.checkpoint, seq_length=FLAGS.seq_length or None)
        paths = export_model(preprocessor, encoder,
                             FLAGS.export_dir or files.join(FLAGS.model_dir, rundir.EXPORT_DIR),
                             seq_length=preprocessor.seq_length, version=FLAGS.version or None)
    print(f"exported {checkpoint} (seq_length {preprocessor.seq_length}):")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
