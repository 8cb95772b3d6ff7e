r"""Imports released BERT / LaBSE weights into a labse_tf model directory.

    python -m labse_tf.convert --from=tfhub --source=LaBSE_2/ --output=runs/labse
    python -m labse_tf.convert --from=garden --source=CKPT_DIR_OR_PREFIX --vocab=vocab.txt \
        --output=runs/labse
    python -m labse_tf.convert --from=hf --source=HF_MODEL_DIR --output=runs/labse

Sources (local paths or URLs such as gs://...; nothing is fetched from TF Hub or Hugging Face):
  tfhub   a TF Hub encoder SavedModel in tf-models-official's BertEncoder variable layout
          (LaBSE v1/v2, LEALLA, the BERT encoders). The vocabulary is the SavedModel's own
          asset, or --vocab: a vocab file or the matching preprocessor SavedModel directory.
  garden  a tf-models-official checkpoint holding a BertEncoder, BertEncoderV2 or a
          DualEncoder around one (optimizer state is skipped); --vocab is required.
  hf      a Hugging Face BertModel directory: config.json, vocab.txt, the weights as
          model.safetensors (or sharded, with model.safetensors.index.json) or tf_model.h5,
          pooler included; tokenizer_config.json's do_lower_case when present.

OUTPUT is a model directory (config.yaml, vocab.txt, checkpoints/ckpt-0) that
`labse_tf.train --init_checkpoint`, `labse_tf.export`, `labse_tf.evaluate --model_dir` and
`labse_tf.prune_vocab` accept. Every source tensor is mapped by name onto the keras-hub
BertBackbone of labse_tf.model and checked against its shape; a missing, unexpected or
mis-shaped tensor stops the conversion with the full list. Tensors outside the encoder
(training heads, step counters, the TF Hub do_lower_case flag) are skipped and reported.

Numerics: labse_tf's BERT (keras-hub) is post-LayerNorm with epsilon 1e-12, tanh-approximate
GELU and a dense+tanh pooler on [CLS], as tf-models-official's BertEncoder, so tfhub and
garden sources convert exactly. Hugging Face's `hidden_act: gelu` is the exact erf GELU; the
converted model computes the tanh approximation instead (the one LaBSE was trained with), a
difference reported as a note. The embedding is the L2-normalised pooled output; TF Hub
LaBSE v2's `default` output is not normalised, so normalise it before comparing.
"""

import dataclasses
import functools
import json
import math
import re
import struct
from typing import Callable

import h5py
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from labse_tf import checkpoints, cli, config as config_lib, files, rundir
from labse_tf.model import build_encoder, copy_weights
from labse_tf.preprocessing import SPECIAL_TOKENS, read_vocab

__all__ = ["SOURCES", "ConversionError", "Source", "Tensor", "convert", "map_weights",
           "read_checkpoint", "read_h5", "read_safetensors", "read_source"]

FLAGS = flags.FLAGS

SOURCES = ("tfhub", "garden", "hf")
# What keras-hub's BertBackbone computes (labse_tf cannot change it without a model option).
LAYER_NORM_EPSILON = 1e-12
# Hugging Face activations equal to keras-hub's tanh-approximate GELU, and the exact one.
_HF_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_HF_EXACT_GELU = "gelu"
# Entries of a long list shown in an error message.
_SHOWN = 20


class ConversionError(ValueError):
    """The source cannot be mapped onto a labse_tf encoder; the message says why."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A source tensor's shape, and how to read it (lazily: LaBSE's embeddings are 1.5 GB)."""

    shape: tuple
    load: Callable[[], np.ndarray]


@dataclasses.dataclass
class Source:
    """A source model read from disk, before mapping.

    Attributes:
      description: str. What was read, for messages.
      tensors: dict name → Tensor. The encoder's tensors, named without the encoder's prefix.
      rules: list of (regex, target template, kind). How names map onto the encoder.
      model: dict. ModelConfig fields of the source's shape.
      vocab: list of str. The wordpiece vocabulary, one token per embedding row.
      lowercase: bool or None. The source tokenizer's lowercasing, if it records it.
      notes: list of str. Differences from the source worth telling the user.
      ignored: list of str. Tensors outside the encoder, skipped.
    """

    description: str
    tensors: dict
    rules: list
    model: dict
    vocab: list
    lowercase: bool | None
    notes: list
    ignored: list


# --- How a source tensor becomes a target variable, given the target's shape `t`: the source
# shape expected, and the conversion. ---

def _copy(t):
    return t, lambda x: x


def _bias(t):
    return (math.prod(t),), lambda x: x.reshape(t)


def _linear(inputs: int):
    """A PyTorch Linear weight `[out, in]` → a Keras kernel whose first `inputs` dims index in."""
    def kind(t):
        return (math.prod(t[inputs:]), math.prod(t[:inputs])), lambda x: x.T.reshape(t)
    return kind


# tf-models-official BertEncoder variable names (TF Hub BERT/LaBSE, Model Garden).
_BERT_ROOTS = ("word_embeddings", "position_embedding", "type_embeddings", "embeddings",
               "transformer", "pooler_transform")
_BERT_RULES = [(re.compile(pattern), target, _copy) for pattern, target in [
    (r"word_embeddings/embeddings", "token_embedding/embeddings"),
    (r"position_embedding/embeddings", "position_embedding/embeddings"),
    (r"type_embeddings/embeddings", "segment_embedding/embeddings"),
    (r"embeddings/layer_norm/(gamma|beta)", r"embeddings_layer_norm/\1"),
    (r"transformer/layer_(\d+)/self_attention/(query|key|value|attention_output)/(kernel|bias)",
     r"transformer_layer_\1/self_attention_layer/\2/\3"),
    (r"transformer/layer_(\d+)/self_attention_layer_norm/(gamma|beta)",
     r"transformer_layer_\1/self_attention_layer_norm/\2"),
    (r"transformer/layer_(\d+)/intermediate/(kernel|bias)",
     r"transformer_layer_\1/feedforward_intermediate_dense/\2"),
    (r"transformer/layer_(\d+)/output/(kernel|bias)",
     r"transformer_layer_\1/feedforward_output_dense/\2"),
    (r"transformer/layer_(\d+)/output_layer_norm/(gamma|beta)",
     r"transformer_layer_\1/feedforward_layer_norm/\2"),
    (r"pooler_transform/(kernel|bias)", r"pooled_dense/\1"),
]]

# Hugging Face BertModel parameter names (PyTorch layout; TF h5 names are translated to these).
_HF_ROOTS = ("embeddings", "encoder", "pooler")
# Buffers saved with the weights that are not weights.
_HF_BUFFERS = ("embeddings.position_ids",)
_HF_LAYER = r"encoder\.layer\.(\d+)\."
_HF_RULES = [(re.compile(pattern), target, kind) for pattern, target, kind in [
    (r"embeddings\.word_embeddings\.weight", "token_embedding/embeddings", _copy),
    (r"embeddings\.position_embeddings\.weight", "position_embedding/embeddings", _copy),
    (r"embeddings\.token_type_embeddings\.weight", "segment_embedding/embeddings", _copy),
    (r"embeddings\.LayerNorm\.(?:weight|gamma)", "embeddings_layer_norm/gamma", _copy),
    (r"embeddings\.LayerNorm\.(?:bias|beta)", "embeddings_layer_norm/beta", _copy),
    (_HF_LAYER + r"attention\.self\.(query|key|value)\.weight",
     r"transformer_layer_\1/self_attention_layer/\2/kernel", _linear(1)),
    (_HF_LAYER + r"attention\.self\.(query|key|value)\.bias",
     r"transformer_layer_\1/self_attention_layer/\2/bias", _bias),
    (_HF_LAYER + r"attention\.output\.dense\.weight",
     r"transformer_layer_\1/self_attention_layer/attention_output/kernel", _linear(2)),
    (_HF_LAYER + r"attention\.output\.dense\.bias",
     r"transformer_layer_\1/self_attention_layer/attention_output/bias", _copy),
    (_HF_LAYER + r"attention\.output\.LayerNorm\.(?:weight|gamma)",
     r"transformer_layer_\1/self_attention_layer_norm/gamma", _copy),
    (_HF_LAYER + r"attention\.output\.LayerNorm\.(?:bias|beta)",
     r"transformer_layer_\1/self_attention_layer_norm/beta", _copy),
    (_HF_LAYER + r"intermediate\.dense\.weight",
     r"transformer_layer_\1/feedforward_intermediate_dense/kernel", _linear(1)),
    (_HF_LAYER + r"intermediate\.dense\.bias",
     r"transformer_layer_\1/feedforward_intermediate_dense/bias", _copy),
    (_HF_LAYER + r"output\.dense\.weight",
     r"transformer_layer_\1/feedforward_output_dense/kernel", _linear(1)),
    (_HF_LAYER + r"output\.dense\.bias",
     r"transformer_layer_\1/feedforward_output_dense/bias", _copy),
    (_HF_LAYER + r"output\.LayerNorm\.(?:weight|gamma)",
     r"transformer_layer_\1/feedforward_layer_norm/gamma", _copy),
    (_HF_LAYER + r"output\.LayerNorm\.(?:bias|beta)",
     r"transformer_layer_\1/feedforward_layer_norm/beta", _copy),
    (r"pooler\.dense\.weight", "pooled_dense/kernel", _linear(1)),
    (r"pooler\.dense\.bias", "pooled_dense/bias", _copy),
]]


def _listing(names) -> str:
    names = list(names)
    more = f", ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


# --- Readers: name → Tensor, nothing loaded yet. ---

def read_checkpoint(prefix: str) -> dict:
    """A TF2 checkpoint's variables by their variable names (the `full_name` it records).

    Object-based checkpoints key tensors by object path (`layer_with_weights-4/...`), which
    differs between BertEncoder versions; the variable names do not. Optimizer state is
    skipped.
    """
    # Not tf.train.load_checkpoint, which first asks whether `prefix` is a directory: TF's
    # ram:// (the tests' stand-in for gs://) says yes to any prefix of a file's name.
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    shapes = reader.get_variable_to_shape_map()
    tensors = {}
    for node in graph.nodes:
        for attribute in node.attributes:
            key = attribute.checkpoint_key
            if (attribute.name != "VARIABLE_VALUE" or ".OPTIMIZER_SLOT" in key
                    or key.startswith("optimizer/")):
                continue
            name = attribute.full_name or key
            if name in tensors:
                raise ConversionError(f"{prefix}: two variables are named {name!r}")
            tensors[name] = Tensor(tuple(shapes[key]), functools.partial(reader.get_tensor, key))
    return tensors


# safetensors dtype → NumPy dtype of its bytes (little-endian; BF16 is read as its bits).
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
                       "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _read_safetensor(path, offset, length, dtype, shape) -> np.ndarray:
    if dtype not in _SAFETENSORS_DTYPES:
        raise ConversionError(f"{path}: unsupported safetensors dtype {dtype}")
    with files.open_file(path, "rb") as f:
        f.seek(offset)
        raw = np.frombuffer(f.read(length), _SAFETENSORS_DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw


def read_safetensors(path: str) -> dict:
    """The tensors of a .safetensors file: an 8-byte little-endian header length, a JSON
    header {name: {dtype, shape, data_offsets}}, then the raw bytes (each tensor's range is
    read when it is loaded)."""
    with files.open_file(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{path}: not a safetensors file (bad header: {e})") from None
    return {name: Tensor(tuple(info["shape"]), functools.partial(
                _read_safetensor, path, 8 + size + info["data_offsets"][0],
                info["data_offsets"][1] - info["data_offsets"][0], info["dtype"],
                tuple(info["shape"])))
            for name, info in header.items() if name != "__metadata__"}


def _h5_to_torch_name(name: str) -> tuple[str, bool]:
    """A Hugging Face TF weight name → (the PyTorch parameter name, whether to transpose).

    `.../encoder/layer_._3/attention/self/query/kernel:0` → `...encoder.layer.3.attention.
    self.query.weight`, transposed (Keras kernels are `[in, out]`, torch weights `[out, in]`).
    """
    parts = name.removesuffix(":0").split("/")
    parts = [p for part in parts for p in (["layer", part[len("layer_._"):]]
                                           if part.startswith("layer_._") else [part])]
    last = parts[-1]
    parts[-1] = {"kernel": "weight", "gamma": "weight", "beta": "bias",
                 "embeddings": "weight"}.get(last, last)
    return ".".join(parts), last == "kernel"


def _read_h5_dataset(path: str, name: str, transpose: bool) -> np.ndarray:
    with files.open_file(path, "rb") as raw, h5py.File(raw, "r") as f:
        value = f[name][()]
    return value.T if transpose else value


def read_h5(path: str) -> dict:
    """The weights of a Hugging Face `tf_model.h5`, under their PyTorch names and layout."""
    names = []
    with files.open_file(path, "rb") as raw, h5py.File(raw, "r") as f:
        f.visititems(lambda name, obj: names.append((name, obj.shape))
                     if isinstance(obj, h5py.Dataset) else None)
    tensors = {}
    for name, shape in names:
        torch_name, transpose = _h5_to_torch_name(name)
        tensors[torch_name] = Tensor(tuple(reversed(shape)) if transpose else tuple(shape),
                                     functools.partial(_read_h5_dataset, path, name, transpose))
    return tensors


def _split_encoder(tensors: dict, roots, sep: str, where: str) -> tuple[dict, list]:
    """The encoder's tensors named from their root (its prefix removed), and the others.

    The prefix is what precedes the first root segment (`bert.` in `bert.encoder.layer.0...`,
    `bert_encoder_v2/` in `bert_encoder_v2/transformer/...`); it must be the same for all.
    """
    encoder, ignored, prefixes = {}, [], set()
    for name, tensor in tensors.items():
        parts = name.split(sep)
        # A root names a layer, never the variable itself (`.../token_embedding/embeddings`).
        start = next((i for i, part in enumerate(parts[:-1]) if part in roots), None)
        if start is None:
            ignored.append(name)
            continue
        prefixes.add(sep.join(parts[:start]))
        encoder[sep.join(parts[start:])] = tensor
    if len(prefixes) > 1:
        raise ConversionError(f"{where}: tensors of more than one encoder (name prefixes "
                              f"{sorted(prefixes)}); convert a single encoder")
    if not encoder:
        raise ConversionError(f"{where}: no encoder tensors found (expected names under "
                              f"{', '.join(roots)}; found {_listing(sorted(tensors))})")
    return encoder, sorted(ignored)


def _bert_layout_shape(tensors: dict, where: str) -> dict:
    """ModelConfig fields read off BertEncoder tensor shapes (its checkpoints hold no config)."""
    needed = ["word_embeddings/embeddings", "position_embedding/embeddings",
              "embeddings/layer_norm/gamma", "transformer/layer_0/self_attention/query/kernel",
              "transformer/layer_0/intermediate/kernel"]
    missing = [name for name in needed if name not in tensors]
    if missing:
        raise ConversionError(f"{where}: not a BertEncoder: missing {_listing(missing)}")
    layers = {int(m.group(1)) for name in tensors
              if (m := re.match(r"transformer/layer_(\d+)/", name))}
    return {"vocab_size": tensors["word_embeddings/embeddings"].shape[0],
            "hidden_dim": tensors["embeddings/layer_norm/gamma"].shape[0],
            "num_layers": max(layers) + 1,
            "num_heads": tensors["transformer/layer_0/self_attention/query/kernel"].shape[1],
            "intermediate_dim": tensors["transformer/layer_0/intermediate/kernel"].shape[1],
            "max_sequence_length": tensors["position_embedding/embeddings"].shape[0]}


def _vocab_from(path: str) -> tuple[list, str]:
    """Tokens from a vocab file, or from the one .txt asset of a SavedModel directory."""
    if files.isdir(path):
        assets = files.glob(files.join(path, "assets", "*.txt"))
        if len(assets) != 1:
            raise ConversionError(f"{path}: expected one vocabulary (.txt) in assets/, found "
                                  f"{[files.basename(a) for a in assets]}; pass --vocab=FILE")
        path = assets[0]
    if not files.exists(path):
        raise ConversionError(f"{path}: no such vocabulary file")
    return read_vocab(path), path


def _read_tfhub(path: str, vocab: str | None) -> Source:
    if not files.exists(files.join(path, "saved_model.pb")):
        raise ConversionError(f"{path}: not a SavedModel directory (no saved_model.pb)")
    tensors = read_checkpoint(files.join(path, "variables", "variables"))
    encoder, ignored = _split_encoder(tensors, _BERT_ROOTS, "/", path)
    shape = _bert_layout_shape(encoder, path)
    tokens, vocab_file = _vocab_from(vocab or path)
    # export_tfhub stores the tokenizer's lowercasing as an unnamed boolean variable.
    booleans = [t for t in tensors.values()
                if t.shape == () and np.asarray(t.load()).dtype == bool]
    lowercase = bool(booleans[0].load()) if len(booleans) == 1 else None
    return Source(f"TF Hub SavedModel {path} (vocabulary {vocab_file})", encoder, _BERT_RULES,
                  shape, tokens, lowercase, [], ignored)


def _read_garden(path: str, vocab: str | None) -> Source:
    if not vocab:
        raise ConversionError("--from=garden needs --vocab (a checkpoint holds no vocabulary)")
    prefix = tf.train.latest_checkpoint(path) if files.isdir(path) else path
    if not prefix or not files.exists(prefix + ".index"):
        raise ConversionError(f"{path}: no checkpoint (expected a prefix with a .index file, "
                              "or a directory with a `checkpoint` file)")
    encoder, ignored = _split_encoder(read_checkpoint(prefix), _BERT_ROOTS, "/", prefix)
    shape = _bert_layout_shape(encoder, prefix)
    tokens, vocab_file = _vocab_from(vocab)
    return Source(f"checkpoint {prefix} (vocabulary {vocab_file})", encoder, _BERT_RULES,
                  shape, tokens, None, [], ignored)


def _hf_weights(path: str) -> tuple[dict, str]:
    index = files.join(path, "model.safetensors.index.json")
    if files.exists(index):
        shards = sorted(set(files.read_json(index)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(files.join(path, shard)))
        return tensors, index
    for name, reader in (("model.safetensors", read_safetensors), ("tf_model.h5", read_h5)):
        if files.exists(files.join(path, name)):
            return reader(files.join(path, name)), files.join(path, name)
    raise ConversionError(f"{path}: no model.safetensors, model.safetensors.index.json or "
                          "tf_model.h5 (PyTorch .bin files need torch; save the model with "
                          "safe_serialization=True)")


def _read_json(path: str, required: bool = True) -> dict:
    if not files.exists(path):
        if required:
            raise ConversionError(f"{path}: no such file")
        return {}
    return files.read_json(path)


def _read_hf(path: str, vocab: str | None) -> Source:
    config_file = files.join(path, "config.json")
    config = _read_json(config_file)

    def field(key, default=None):
        if key not in config and default is None:
            raise ConversionError(f"{config_file}: no {key!r}")
        return config.get(key, default)

    if field("model_type", "bert") != "bert":
        raise ConversionError(f"{config_file}: model_type {config['model_type']!r}; only BERT "
                              "(model_type 'bert') has this layout")
    if field("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"{config_file}: position_embedding_type "
                              f"{config['position_embedding_type']!r}; labse_tf has absolute "
                              "position embeddings only")
    if field("type_vocab_size", 2) != 2:
        raise ConversionError(f"{config_file}: type_vocab_size {config['type_vocab_size']}; "
                              "labse_tf's encoder has 2 segment embeddings")
    notes = []
    activation = field("hidden_act", _HF_EXACT_GELU)
    if activation == _HF_EXACT_GELU:
        notes.append("the source's hidden_act 'gelu' is the exact erf GELU; labse_tf computes "
                     "the tanh approximation (as tf-models-official BERT and the TF Hub LaBSE "
                     "do), which moves embeddings slightly (in labse_tf's tests: < 3e-4 per "
                     "component of the unit vector, cosine > 0.99999)")
    elif activation not in _HF_TANH_GELU:
        raise ConversionError(f"{config_file}: hidden_act {activation!r}; labse_tf's encoder "
                              f"computes GELU ({_HF_EXACT_GELU!r} or {_HF_TANH_GELU})")
    epsilon = field("layer_norm_eps", LAYER_NORM_EPSILON)
    if epsilon != LAYER_NORM_EPSILON:
        notes.append(f"the source's LayerNorm epsilon is {epsilon}; labse_tf's is "
                     f"{LAYER_NORM_EPSILON}")
    weights, weights_file = _hf_weights(path)
    weights = {k: v for k, v in weights.items() if not k.endswith(_HF_BUFFERS)}
    encoder, ignored = _split_encoder(weights, _HF_ROOTS, ".", weights_file)
    tokens, vocab_file = _vocab_from(vocab or files.join(path, "vocab.txt"))
    lowercase = _read_json(files.join(path, "tokenizer_config.json"), False).get("do_lower_case")
    model = {"vocab_size": field("vocab_size"), "hidden_dim": field("hidden_size"),
             "num_layers": field("num_hidden_layers"), "num_heads": field("num_attention_heads"),
             "intermediate_dim": field("intermediate_size"),
             "max_sequence_length": field("max_position_embeddings"),
             "dropout": float(field("hidden_dropout_prob", 0.1))}
    return Source(f"Hugging Face BERT {weights_file} (vocabulary {vocab_file})", encoder,
                  _HF_RULES, model, tokens, lowercase, notes, ignored)


def read_source(kind: str, path: str, vocab: str | None = None) -> Source:
    """Reads a source model's tensor list, shape, vocabulary and tokenizer casing.

    Args:
      kind: str. One of SOURCES.
      path: str. The SavedModel directory, checkpoint (prefix or directory) or HF directory.
      vocab: str or None. A vocabulary file or a SavedModel directory with one in assets/;
        default the source's own.
    """
    readers = {"tfhub": _read_tfhub, "garden": _read_garden, "hf": _read_hf}
    if kind not in readers:
        raise ConversionError(f"unknown source kind {kind!r}; expected one of {SOURCES}")
    if not files.exists(path) and not files.exists(path + ".index"):
        raise ConversionError(f"{path}: no such file or directory")
    return readers[kind](path, vocab)


def map_weights(source: Source, targets: dict) -> dict:
    """Maps every source tensor onto one target variable, checking names and shapes.

    Args:
      source: Source.
      targets: dict path → shape of the encoder's variables (`variable.path`).

    Returns:
      dict path → callable returning the float32 value for that variable.

    Raises:
      ConversionError: listing the target variables no tensor maps to, the source tensors
        that map to nothing, and the tensors whose shape is not the one expected.
    """
    plan, found, unexpected, misshaped = {}, set(), [], []
    for name, tensor in sorted(source.tensors.items()):
        match = next(((m, template, kind) for pattern, template, kind in source.rules
                      if (m := pattern.fullmatch(name))), None)
        target = match[0].expand(match[1]) if match else None
        if target not in targets or target in found:
            unexpected.append(name)
            continue
        found.add(target)
        expected, convert_fn = match[2](targets[target])
        if tuple(tensor.shape) != tuple(expected):
            misshaped.append(f"{name} {tuple(tensor.shape)}, expected {tuple(expected)} "
                             f"(for {target} {tuple(targets[target])})")
            continue
        plan[target] = lambda t=tensor, f=convert_fn: np.asarray(f(t.load()), np.float32)
    missing = [path for path in targets if path not in found]
    if missing or unexpected or misshaped:
        problems = [f"  {label}: {_listing(items)}" for label, items in
                    (("missing (no source tensor for these encoder variables)", missing),
                     ("unexpected (source tensors with no place in the encoder)", unexpected),
                     ("mis-shaped", misshaped)) if items]
        raise ConversionError(f"{source.description} does not map onto a labse_tf encoder of "
                              f"that shape:\n" + "\n".join(problems))
    return plan


def _vocab_is_cased(tokens) -> bool:
    """Whether any wordpiece (reserved [..] tokens aside) has an uppercase letter."""
    return any(t != t.lower() for t in tokens if not (t.startswith("[") and t.endswith("]")))


def convert(kind: str, path: str, output: str, *, vocab: str | None = None,
            lowercase: bool | None = None, seq_length: int = 64, log=print) -> dict:
    """Converts a released model into a labse_tf model directory.

    Args:
      kind: str. One of SOURCES.
      path: str. The source (see read_source).
      output: str. The model directory to write; must not hold a model already.
      vocab: str or None. Vocabulary override (see read_source).
      lowercase: bool or None. The tokenizer's lowercasing; default what the source records
        (TF Hub do_lower_case, HF tokenizer_config.json), else whether the vocabulary is cased.
      seq_length: int. data.seq_length of the written config (capped at the position table).
      log: callable. Progress and notes.

    Returns:
      dict: checkpoint, config (the ModelConfig fields), lowercase, parameters, notes, ignored.
    """
    source = read_source(kind, path, vocab)
    if len(source.vocab) != source.model["vocab_size"]:
        raise ConversionError(f"{source.description}: the vocabulary has {len(source.vocab)} "
                              f"tokens but the embedding table has {source.model['vocab_size']} "
                              "rows")
    if lowercase is not None:
        reason = "--lowercase" if lowercase else "--nolowercase"
    elif source.lowercase is not None:
        lowercase, reason = source.lowercase, "recorded by the source"
    else:
        lowercase = not _vocab_is_cased(source.vocab)
        reason = "inferred: the vocabulary is " + ("uncased" if lowercase else "cased")
    notes = list(source.notes)
    if lowercase:
        notes.append("uncased BERT tokenizers strip accents after lowercasing; labse_tf "
                     "case-folds and keeps accents, so accented words tokenize differently "
                     "than with the source's tokenizer")
    cfg = config_lib.override(config_lib.Config(), updates={
        "model": {**source.model, "pooling": "cls"},
        "data": {"lowercase": lowercase,
                 "seq_length": min(seq_length, source.model["max_sequence_length"])}})
    encoder = build_encoder(cfg.model, len(source.vocab))
    plan = map_weights(source, {w.path: tuple(w.shape) for w in encoder.weights})
    copy_weights(encoder, lambda path: plan[path](), what=f"converting {source.description}")
    checkpoint = checkpoints.write_run(cfg, source.vocab, encoder, output)
    m = cfg.model
    log(f"converted {source.description}")
    log(f"  {m.num_layers} layers, hidden {m.hidden_dim}, {m.num_heads} heads, intermediate "
        f"{m.intermediate_dim}, {m.max_sequence_length} positions, vocabulary "
        f"{len(source.vocab):,}; {encoder.count_params():,} parameters")
    log(f"  lowercase={lowercase} ({reason}); special tokens "
        + ", ".join(f"{t}={source.vocab.index(t)}" for t in SPECIAL_TOKENS))
    if source.ignored:
        log(f"  skipped (outside the encoder): {_listing(source.ignored)}")
    for note in notes:
        log(f"  note: {note}")
    log(f"wrote {output} ({rundir.CONFIG_FILE}, {rundir.VOCAB_FILE}, "
        f"{rundir.CHECKPOINT_DIR}/{files.basename(checkpoint)})")
    return {"checkpoint": checkpoint, "config": dataclasses.asdict(m), "lowercase": lowercase,
            "parameters": encoder.count_params(), "notes": notes, "ignored": source.ignored}


def define_flags():
    flags.DEFINE_enum("from", None, SOURCES, "Source format: tfhub (encoder SavedModel), "
                      "garden (tf-models-official checkpoint) or hf (Hugging Face BertModel "
                      "directory).")
    flags.DEFINE_string("source", None, "The source: SavedModel directory, checkpoint prefix "
                        "or directory, or Hugging Face model directory (a local path or a URL).")
    flags.DEFINE_string("output", None, "The labse_tf model directory to write (new).")
    flags.DEFINE_string("vocab", None, "Vocabulary file, or a SavedModel directory with it in "
                        "assets/ (e.g. the TF Hub preprocessor); required for garden, default "
                        "the source's own otherwise.")
    flags.DEFINE_bool("lowercase", None, "Lowercase before wordpiece; default what the source "
                      "records, else inferred from the vocabulary (LaBSE is cased).")
    flags.DEFINE_integer("seq_length", 64, "data.seq_length in the written config (the "
                         "default packed length for training and export).", lower_bound=3)
    for name in ("from", "source", "output"):
        flags.mark_flag_as_required(name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    # ConversionError, ConfigError, a bad vocabulary, ...; OpError: gs:// and the like.
    with cli.exit_on(ValueError, OSError, tf.errors.OpError):
        convert(FLAGS["from"].value, FLAGS.source, FLAGS.output, vocab=FLAGS.vocab,
                lowercase=FLAGS.lowercase, seq_length=FLAGS.seq_length,
                log=cli.log)


if __name__ == "__main__":
    define_flags()
    app.run(main)
