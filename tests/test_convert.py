"""Tests for labse_tf.convert: released-model layouts → labse_tf model directories.

No released weights can be downloaded here, so the sources are small with random weights:
- a tf-models-official BertEncoder exported the way its LaBSE project exports to TF Hub (a
  DualEncoder SavedModel carrying the vocabulary asset and do_lower_case), plus its
  checkpoints, built in a fresh process so that tf_keras never enters the test process;
- a Hugging Face BertModel directory written with NumPy, whose reference is a NumPy forward
  pass of BertModel's maths (post-LayerNorm, GELU, dense+tanh pooler on [CLS]).
Each is converted; the labse_tf encoder then embeds the same token ids as the source.
"""

import json
import math
import os
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text

from conftest import copy_to_ram
from labse_tf import checkpoints, config as config_lib, convert, data, rundir, run_setup, train
from labse_tf.model import build_encoder
from labse_tf.preprocessing import Preprocessor, read_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = ["hello world.", "wie geht es dir?", "le train part à huit heures du matin.",
             "поезд отправляется в восемь часов утра.", "火车早上八点出发。", ""]
SEQ_LENGTH = 16
SHAPE = {"hidden": 16, "layers": 2, "heads": 2, "intermediate": 32, "positions": 32}
# float32 encoders on identical token ids: L2-normalised embeddings and token states.
ATOL = 1e-5
# Hugging Face's exact erf GELU against labse_tf's tanh approximation: measured max |Δ|
# 1.3e-4 to 2.9e-4 and cosine > 0.9999998 over 3 random models of this shape.
GELU_ATOL = 1e-3
GELU_COSINE = 0.99999


def _inputs(vocab_file: str) -> dict:
    packed = Preprocessor(vocab_file, lowercase=True, seq_length=SEQ_LENGTH)(tf.constant(SENTENCES))
    return {k: v.numpy() for k, v in packed.items()}


def _embed(model_dir: str, inputs: dict) -> tuple[np.ndarray, np.ndarray]:
    """The converted run's (embedding, sequence_output) on `inputs`, loaded as users load it."""
    _, _, encoder, _ = checkpoints.load_run(model_dir)
    out = encoder(inputs, training=False)
    return out["embedding"].numpy(), out["sequence_output"].numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- tf-models-official sources, built in a fresh process. ---

GARDEN_SCRIPT = r'''
import sys
import numpy as np
import tensorflow as tf
import tf_keras
from official.legacy.bert import bert_models, configs
from official.nlp.modeling import models, networks

out, vocab_file, hidden, layers, heads, intermediate, positions = sys.argv[1:]
hidden, layers, heads, intermediate, positions = map(
    int, (hidden, layers, heads, intermediate, positions))
inputs = np.load(f"{out}/inputs.npz")
ids = [inputs["token_ids"], inputs["padding_mask"], inputs["segment_ids"]]
vocab_size = sum(1 for _ in open(vocab_file, encoding="utf-8"))

# As official/projects/labse/export_tfhub.py builds LaBSE: a BERT config, its encoder, a
# DualEncoder that outputs predictions.
bert_config = configs.BertConfig(
    vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
    num_attention_heads=heads, intermediate_size=intermediate,
    max_position_embeddings=positions, type_vocab_size=2)
encoder = bert_models.get_transformer_encoder(bert_config, sequence_length=None)
labse = models.DualEncoder(network=encoder, max_seq_length=None, normalize=True,
                           output="predictions")
# Random weights large enough that every tensor shapes the output; LayerNorm scales near 1.
rng = np.random.default_rng(0)
for v in encoder.variables:
    base = 1.0 if v.name.endswith("gamma:0") else 0.0
    v.assign(base + rng.normal(0, 0.3, v.shape).astype(np.float32))
# One optimizer step, so the DualEncoder checkpoint also holds optimizer state.
optimizer = tf_keras.optimizers.Adam(1e-3)
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(labse(ids)["pooled_output"][:, 0])
optimizer.apply_gradients(zip(tape.gradient(loss, labse.trainable_variables),
                              labse.trainable_variables))
tf.train.Checkpoint(model=labse, optimizer=optimizer).save(f"{out}/dual/ckpt")
tf.train.Checkpoint(encoder=encoder).save(f"{out}/encoder/ckpt")
# The same weights in BertEncoderV2, whose variable names carry its layer scope.
v2 = networks.BertEncoderV2(
    vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
    inner_dim=intermediate, max_sequence_length=positions, type_vocab_size=2)
v2(dict(input_word_ids=ids[0], input_mask=ids[1], input_type_ids=ids[2]))
by_name = {v.name: v for v in encoder.variables}
for v in v2.variables:
    v.assign(by_name[v.name.split("/", 1)[1]])
tf.train.Checkpoint(encoder=v2).save(f"{out}/v2/ckpt")
# export_tfhub.export_labse_model's additions, then a TF Hub SavedModel.
labse.vocab_file = tf.saved_model.Asset(vocab_file)
labse.do_lower_case = tf.Variable(True, trainable=False)
labse.save(f"{out}/hub", include_optimizer=False, save_format="tf")
# The reference: what the exported TF Hub model computes, reloaded.
hub = tf.saved_model.load(f"{out}/hub")
result = hub([tf.constant(x) for x in ids], training=False)
np.savez(f"{out}/reference.npz", pooled=result["pooled_output"].numpy(),
         sequence=result["sequence_output"].numpy())
'''


@pytest.fixture(scope="module")
def garden(tmp_path_factory, vocab_file):
    """tf-models-official sources (hub/, dual/, encoder/, v2/) and their reference outputs."""
    pytest.importorskip("official", reason="needs tf-models-official (the `garden` extra)")
    out = str(tmp_path_factory.mktemp("garden"))
    inputs = _inputs(vocab_file)
    np.savez(os.path.join(out, "inputs.npz"), **inputs)
    args = [str(SHAPE[k]) for k in ("hidden", "layers", "heads", "intermediate", "positions")]
    done = subprocess.run([sys.executable, "-c", GARDEN_SCRIPT, out, vocab_file, *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = np.load(os.path.join(out, "reference.npz"))
    return {"dir": out, "inputs": inputs, "pooled": reference["pooled"],
            "sequence": reference["sequence"]}


def _assert_same_as_garden(model_dir, garden):
    embedding, sequence = _embed(model_dir, garden["inputs"])
    # export_tfhub's DualEncoder normalises pooled_output (normalize=True); LaBSE v2's does not.
    np.testing.assert_allclose(embedding, _unit(garden["pooled"]), atol=ATOL)
    real = garden["inputs"]["padding_mask"].astype(bool)
    np.testing.assert_allclose(sequence[real], garden["sequence"][real], atol=ATOL)


@pytest.mark.slow
def test_tfhub_savedmodel_converts_to_the_same_embeddings(garden, vocab_file, tmp_path):
    out = str(tmp_path / "labse")
    result = convert.convert("tfhub", os.path.join(garden["dir"], "hub"), out, log=lambda m: None)
    _assert_same_as_garden(out, garden)
    cfg, preprocessor, _, _ = checkpoints.load_run(out)
    assert read_vocab(rundir.vocab_path(out)) == read_vocab(vocab_file)
    assert result["lowercase"] is True and cfg.data.lowercase  # the SavedModel's do_lower_case
    assert (cfg.model.num_layers, cfg.model.hidden_dim, cfg.model.num_heads,
            cfg.model.intermediate_dim, cfg.model.max_sequence_length, cfg.model.pooling) == (
        SHAPE["layers"], SHAPE["hidden"], SHAPE["heads"], SHAPE["intermediate"],
        SHAPE["positions"], "cls")
    assert result["ignored"] == ["Variable"]  # do_lower_case, outside the encoder


@pytest.mark.slow
def test_garden_checkpoint_converts_from_the_command_line(garden, vocab_file, tmp_path):
    out = str(tmp_path / "labse")
    done = subprocess.run(
        [sys.executable, "-m", "labse_tf.convert", "--from=garden",
         f"--source={garden['dir']}/dual", f"--vocab={vocab_file}", f"--output={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lowercase=True (inferred: the vocabulary is uncased)" in done.stdout
    assert "skipped (outside the encoder): save_counter\n" in done.stdout
    _assert_same_as_garden(out, garden)
    with pytest.raises(FileExistsError, match="already holds config.yaml"):
        convert.convert("garden", f"{garden['dir']}/dual", out, vocab=vocab_file,
                        log=lambda m: None)


@pytest.mark.slow
def test_garden_sources_on_another_filesystem(garden, vocab_file, tmp_path, monkeypatch):
    """The TF Hub SavedModel and a checkpoint directory read from ram:// in this process."""
    source = copy_to_ram(garden["dir"], f"{tmp_path.name}/garden")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for kind, path, vocab in [("tfhub", f"{source}/hub", None),
                              ("garden", f"{source}/dual", f"{source}/hub")]:
        out = str(tmp_path / kind)
        convert.convert(kind, path, out, vocab=vocab, log=lambda m: None)
        _assert_same_as_garden(out, garden)
        assert read_vocab(rundir.vocab_path(out)) == read_vocab(vocab_file)
    assert os.listdir(tmp_path / "cwd") == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["encoder", "v2"])
def test_garden_encoder_checkpoints_convert(garden, vocab_file, tmp_path, kind):
    out = str(tmp_path / kind)
    convert.convert("garden", os.path.join(garden["dir"], kind), out, vocab=vocab_file,
                    log=lambda m: None)
    _assert_same_as_garden(out, garden)


# --- Hugging Face sources, written with NumPy. ---

def _hf_weights(vocab_size: int, seed: int = 0) -> dict:
    """Random BertModel parameters in PyTorch layout (Linear weights are `[out, in]`)."""
    rng = np.random.default_rng(seed)
    h, i = SHAPE["hidden"], SHAPE["intermediate"]
    shapes = {"embeddings.word_embeddings.weight": (vocab_size, h),
              "embeddings.position_embeddings.weight": (SHAPE["positions"], h),
              "embeddings.token_type_embeddings.weight": (2, h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
              "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)}
    for n in range(SHAPE["layers"]):
        p = f"encoder.layer.{n}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h, h), (h,)
        shapes.update({p + "intermediate.dense.weight": (i, h), p + "intermediate.dense.bias": (i,),
                       p + "output.dense.weight": (h, i), p + "output.dense.bias": (h,)})
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (h,), (h,)
    return {name: ((1.0 if name.endswith("LayerNorm.weight") else 0.0)
                   + rng.normal(0, 0.3, shape)).astype(np.float32)
            for name, shape in shapes.items()}


def _gelu(x: np.ndarray, hidden_act: str) -> np.ndarray:
    if hidden_act == "gelu":  # exact: x·Φ(x)
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * gamma + beta


def hf_bert(w: dict, inputs: dict, hidden_act: str) -> tuple[np.ndarray, np.ndarray]:
    """BertModel's forward pass in float64 NumPy: (pooler_output, last_hidden_state)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    ids, mask, types = inputs["token_ids"], inputs["padding_mask"], inputs["segment_ids"]
    batch, length = ids.shape
    heads = SHAPE["heads"]
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][
        :length] + w["embeddings.token_type_embeddings.weight"][types])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    for n in range(SHAPE["layers"]):
        p = f"encoder.layer.{n}."

        def linear(name, h):
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def split(h):  # [batch, length, hidden] → [batch, heads, length, head_dim]
            return h.reshape(batch, length, heads, -1).transpose(0, 2, 1, 3)

        q, k, v = (split(linear(f"attention.self.{name}", x)) for name in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        scores = scores + (1.0 - mask[:, None, None, :]) * -1e9
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
        x = _layer_norm(linear("attention.output.dense", context) + x,
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"])
        h = _gelu(linear("intermediate.dense", x), hidden_act)
        x = _layer_norm(linear("output.dense", h) + x, w[p + "output.LayerNorm.weight"],
                        w[p + "output.LayerNorm.bias"])
    pooled = np.tanh(x[:, 0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
    return pooled, x


def write_safetensors(path: str, arrays: dict) -> None:
    """The safetensors format: u64 header length, JSON header, raw little-endian bytes.

    uint16 arrays are written as BF16: they hold bfloat16 bit patterns.
    """
    codes = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i8"): "I64",
             np.dtype("<u2"): "BF16"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in arrays.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_tf_h5(path: str, arrays: dict) -> None:
    """Hugging Face's tf_model.h5 layout: TF names (`layer_._N`, `kernel` = weightᵀ, `gamma`,
    `beta`, `embeddings`) under the Keras layer `bert`."""
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            parts = name.split(".")
            if "layer" in parts:
                at = parts.index("layer")
                parts[at:at + 2] = [f"layer_._{parts[at + 1]}"]
            if parts[-2] == "LayerNorm":
                parts[-1] = {"weight": "gamma", "bias": "beta"}[parts[-1]]
            elif parts[-2] in ("position_embeddings", "token_type_embeddings"):
                parts[-1] = "embeddings"
            elif parts[-1] == "weight" and parts[-2] != "word_embeddings":
                parts[-1], array = "kernel", array.T
            f.create_dataset("bert/tf_bert_model/bert/" + "/".join(parts) + ":0", data=array)


def write_hf_dir(path, vocab_file: str, weights: dict, *, hidden_act: str = "gelu",
                 weights_format: str = "safetensors") -> str:
    """A BertModel directory as save_pretrained writes it (config in BertConfig's format)."""
    os.makedirs(path, exist_ok=True)
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_act": hidden_act,
              "hidden_size": SHAPE["hidden"], "num_hidden_layers": SHAPE["layers"],
              "num_attention_heads": SHAPE["heads"], "intermediate_size": SHAPE["intermediate"],
              "max_position_embeddings": SHAPE["positions"], "type_vocab_size": 2,
              "vocab_size": len(read_vocab(vocab_file)), "layer_norm_eps": 1e-12,
              "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
              "position_embedding_type": "absolute", "pad_token_id": 0}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, f)
    with open(vocab_file, encoding="utf-8") as src, open(os.path.join(path, "vocab.txt"), "w",
                                                         encoding="utf-8") as dst:
        dst.write(src.read())
    if weights_format == "safetensors":
        # Older checkpoints also save the position_ids buffer, which is not a weight.
        buffers = {"embeddings.position_ids": np.arange(SHAPE["positions"])[None]}
        write_safetensors(os.path.join(path, "model.safetensors"),
                          {"bert." + k: v for k, v in {**weights, **buffers}.items()})
    else:
        write_tf_h5(os.path.join(path, "tf_model.h5"), weights)
    return str(path)


@pytest.mark.parametrize("weights_format,hidden_act", [
    ("safetensors", "gelu_new"), ("h5", "gelu_pytorch_tanh"), ("safetensors", "gelu")])
def test_hf_bert_converts_to_the_same_embeddings(vocab_file, tmp_path, weights_format,
                                                  hidden_act):
    weights = _hf_weights(len(read_vocab(vocab_file)))
    source = write_hf_dir(tmp_path / "hf", vocab_file, weights, hidden_act=hidden_act,
                          weights_format=weights_format)
    out = str(tmp_path / "labse")
    logged = []
    result = convert.convert("hf", source, out, log=logged.append)
    inputs = _inputs(vocab_file)
    embedding, sequence = _embed(out, inputs)
    pooled, states = hf_bert(weights, inputs, hidden_act)
    real = inputs["padding_mask"].astype(bool)
    if hidden_act == "gelu":
        # Exact erf GELU in the source, the tanh approximation in labse_tf: close, not equal.
        assert any("exact erf GELU" in note for note in result["notes"])
        cosine = np.sum(embedding * _unit(pooled), axis=-1)
        assert cosine.min() > GELU_COSINE, cosine
        np.testing.assert_allclose(embedding, _unit(pooled), atol=GELU_ATOL)
        assert np.abs(embedding - _unit(pooled)).max() > 1e-6  # the difference is real
    else:
        assert not any("GELU" in note for note in result["notes"])
        np.testing.assert_allclose(embedding, _unit(pooled), atol=ATOL)
        np.testing.assert_allclose(sequence[real], states[real], atol=ATOL)
    assert result["lowercase"] is True  # tokenizer_config.json's do_lower_case
    assert any("keeps accents" in note for note in result["notes"])  # uncased: a difference
    assert result["ignored"] == []  # position_ids is a known buffer, not a stray tensor
    assert any("lowercase=True (recorded by the source)" in line for line in logged)


@pytest.mark.parametrize("weights_format", ["safetensors", "h5"])
def test_hf_source_on_another_filesystem(vocab_file, tmp_path, monkeypatch, weights_format):
    """Read from ram:// (TF's in-memory filesystem, a stand-in for gs://) in this process."""
    weights = _hf_weights(len(read_vocab(vocab_file)))
    local = write_hf_dir(tmp_path / "hf", vocab_file, weights, hidden_act="gelu_new",
                         weights_format=weights_format)
    source = copy_to_ram(local, f"{tmp_path.name}/hf")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = str(tmp_path / "labse")
    logged = []
    convert.convert("hf", source, out, log=logged.append)
    inputs = _inputs(vocab_file)
    np.testing.assert_allclose(_embed(out, inputs)[0], _unit(hf_bert(weights, inputs,
                                                                    "gelu_new")[0]), atol=ATOL)
    weights_file = "model.safetensors" if weights_format == "safetensors" else "tf_model.h5"
    assert f"converted Hugging Face BERT {source}/{weights_file}" in logged[0]
    assert os.listdir(tmp_path / "cwd") == []


def test_output_on_another_filesystem(vocab_file, tmp_path, monkeypatch):
    weights = _hf_weights(len(read_vocab(vocab_file)))
    source = write_hf_dir(tmp_path / "hf", vocab_file, weights, hidden_act="gelu_new")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = f"ram://{tmp_path.name}/labse"
    result = convert.convert("hf", source, out, log=lambda m: None)
    assert os.listdir(tmp_path / "cwd") == []
    assert result["checkpoint"] == f"{out}/checkpoints/ckpt-0"
    inputs = _inputs(vocab_file)
    np.testing.assert_allclose(_embed(out, inputs)[0], _unit(hf_bert(weights, inputs,
                                                                    "gelu_new")[0]), atol=ATOL)


def test_mismatched_tensors_are_listed(vocab_file, tmp_path):
    weights = _hf_weights(len(read_vocab(vocab_file)))
    del weights["encoder.layer.1.output.dense.bias"]
    weights["encoder.layer.2.output.dense.bias"] = np.zeros(SHAPE["hidden"], np.float32)
    weights["encoder.layer.0.intermediate.dense.weight"] = np.zeros(
        (SHAPE["intermediate"] + 1, SHAPE["hidden"]), np.float32)
    source = write_hf_dir(tmp_path / "hf", vocab_file, weights)
    with pytest.raises(convert.ConversionError) as error:
        convert.convert("hf", source, str(tmp_path / "labse"), log=lambda m: None)
    message = str(error.value)
    assert "missing (no source tensor for these encoder variables): " \
           "transformer_layer_1/feedforward_output_dense/bias" in message
    assert "unexpected (source tensors with no place in the encoder): " \
           "encoder.layer.2.output.dense.bias" in message
    assert ("mis-shaped: encoder.layer.0.intermediate.dense.weight (33, 16), expected (32, 16) "
            "(for transformer_layer_0/feedforward_intermediate_dense/kernel (16, 32))") in message
    assert not os.path.exists(tmp_path / "labse")


def test_hf_config_that_labse_tf_cannot_compute_is_refused(vocab_file, tmp_path):
    weights = _hf_weights(len(read_vocab(vocab_file)))
    source = write_hf_dir(tmp_path / "hf", vocab_file, weights, hidden_act="relu")
    with pytest.raises(convert.ConversionError, match="hidden_act 'relu'"):
        convert.convert("hf", source, str(tmp_path / "labse"), log=lambda m: None)


def test_safetensors_half_precision_and_bfloat16_decode(tmp_path):
    values = np.array([[1.5, -2.25], [0.0, 24576.0]], np.float32)  # exact in both
    path = str(tmp_path / "x.safetensors")
    write_safetensors(path, {"half": values.astype("<f2")})
    # bfloat16 is the top 16 bits of float32 (exact for these values).
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    write_safetensors(str(tmp_path / "b.safetensors"), {"bf16": bits})
    tensors = {**convert.read_safetensors(path),
               **convert.read_safetensors(str(tmp_path / "b.safetensors"))}
    for name in ("half", "bf16"):
        assert tensors[name].shape == (2, 2)
        np.testing.assert_array_equal(tensors[name].load().astype(np.float32), values)


def test_converted_model_is_a_training_start(vocab_file, tmp_path):
    """What `labse_tf.train --config=DIR/config.yaml --init_checkpoint=DIR` does before its
    loop: read the config, settle the vocabulary, build the encoder, load the weights."""
    weights = _hf_weights(len(read_vocab(vocab_file)))
    source = write_hf_dir(tmp_path / "hf", vocab_file, weights, hidden_act="gelu_new")
    converted = str(tmp_path / "labse")
    convert.convert("hf", source, converted, log=lambda m: None)
    cfg = config_lib.load_config(os.path.join(converted, "config.yaml"))
    cfg, _, preprocessor = run_setup.prepare_run(cfg, str(tmp_path / "finetune"),
                                               [data.sample_corpus_path("train")], lambda m: None)
    encoder = build_encoder(cfg.model, preprocessor.vocab_size, cfg.train.precision)
    train.init_from_pretrained(encoder, converted, log=lambda m: None)
    _, _, loaded, _ = checkpoints.load_run(converted)
    for got, want in zip(encoder.weights, loaded.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # HF query weight [out, in] → keras-hub kernel [in, heads, head_dim].
    kernel = {w.path: w for w in encoder.weights}[
        "transformer_layer_0/self_attention_layer/query/kernel"].numpy()
    query = weights["encoder.layer.0.attention.self.query.weight"]
    np.testing.assert_array_equal(kernel, query.T.reshape(SHAPE["hidden"], SHAPE["heads"], -1))


def test_preprocessor_differs_from_bert_tokenizer_only_by_nfkc(tmp_path):
    """labse_tf's Preprocessor vs the tokenizer of TF Hub's cased BERT/LaBSE preprocessors
    (tensorflow-text BertTokenizer, no normalisation): the same wordpieces, except where
    NFKC rewrites compatibility characters (full-width forms, ligatures, superscripts, …)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "world", ",", ".", "!",
              "A", "B", "C", "1", "2", "3", "fi", "##ne", "x", "##2", "…", "Ａ", "ﬁ", "##²"]
    vocab_file = str(tmp_path / "vocab.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    ours = Preprocessor(vocab_file, lowercase=False)
    table = tf.lookup.StaticVocabularyTable(tf.lookup.KeyValueTensorInitializer(
        tokens, tf.range(len(tokens), dtype=tf.int64)), num_oov_buckets=1)
    bert = tf_text.BertTokenizer(table, token_out_type=tf.int64, lower_case=False,
                                 unknown_token="[UNK]")

    def pieces(tokenize, text):
        ids = tokenize(tf.constant([text])).merge_dims(-2, -1)[0].numpy()
        return [tokens[i] for i in ids]

    for same in ["Hello, world!", "ABC 123", "fine x"]:
        assert pieces(ours.tokenize, same) == pieces(bert.tokenize, same), same
    differs = {"Ａ": (["A"], ["Ａ"]),                 # full-width letter
               "ﬁne": (["fi", "##ne"], ["ﬁ", "##ne"]),  # ligature
               "x²": (["x", "##2"], ["x", "##²"]),      # superscript
               "…": ([".", ".", "."], ["…"])}           # ellipsis
    for text, (expected_ours, expected_bert) in differs.items():
        assert pieces(ours.tokenize, text) == expected_ours, text
        assert pieces(bert.tokenize, text) == expected_bert, text
