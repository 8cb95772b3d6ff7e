"""Tests for labse_tf.export: the exported SavedModels, reloaded in a process without labse_tf.

The export runs through the command line; one fresh Python process then loads it the ways
users do (TF Hub layers, hub.load, the signatures, Keras 3 TFSMLayer, the TF Serving
request protos, export/README.md's examples), first without tensorflow-text, and reports
what it computed. The tests compare that with the in-memory model rebuilt from the same
checkpoint.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from labse_tf import checkpoints, config as config_lib, export, files, rundir
from labse_tf.model import INPUT_NAMES, build_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "export", "README.md")
MODELS_CONFIG = os.path.join(ROOT, "export", "models.config")

SEQ_LENGTH = 24  # the export's default; the run trained at 32
SEQ_LENGTH_2 = 48  # chosen at call time through bert_pack_inputs
MAX_SEQ_LENGTH = 64  # the tiny config's model.max_sequence_length
TOO_LONG = 80
DIM = 32
ATOL = 1e-5  # loaded vs in-memory, float32 unit vectors
SENTENCES = ["Hello world.", "How are you?", "Wie geht es dir?", "Je suis très content.",
             "Это предложение не помещается в двадцать четыре токена. " * 4]
# Each must embed to a finite unit vector.
BAD = {"empty": b"", "whitespace": b"  \t\n ", "10k characters": ("word " * 2000).encode(),
       "one 10k-character word": b"x" * 10000, "invalid UTF-8": b"ab\xff\xfe\xc3(cd",
       "control characters": b"\x00\x01\x07\x1b\x7f",
       "emoji and symbols": "😀 ☃ ∑ © ⊕ 🇩🇪".encode()}
# A pair long enough that round-robin truncation at SEQ_LENGTH_2 cuts both segments.
PAIR = (["one two three four five six seven eight nine ten " * 4, "short"],
        ["eins zwei drei vier fünf sechs sieben acht neun zehn " * 4, "kurz"])
# What models.config serves (as the loading script's `served`), from which export directory.
SERVED = {"labse": "serving/1", "labse_preprocessor": "preprocessor",
          "labse_encoder": "encoder"}
# The tensorflow-text ops of the tokenizing graphs (CaseFoldUTF8: the run lowercases).
TEXT_OPS = ["CaseFoldUTF8", "FastWordpieceTokenizeWithOffsets", "NormalizeUTF8",
            "RegexSplitWithOffsets", "TFText>RoundRobinTrim"]


def _readme() -> str:
    with open(README) as f:
        return f.read()


def _readme_blocks() -> dict:
    """export/README.md's code blocks keyed by what they show, and its REST requests."""
    text = _readme()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    markers = {"hub": "encoder(preprocessor(sentences))", "pack": "bert_pack_inputs",
               "encoder_attributes": "do_lower_case", "finetune": "trainable=True",
               "keras3": "TFSMLayer", "grpc": "PredictionServiceStub"}
    found = {}
    for key, marker in markers.items():
        matching = [b for b in blocks if marker in b]
        assert len(matching) == 1, f"README: expected one python block with {marker!r}"
        found[key] = matching[0]
    [curl] = re.findall(r"```sh\n(curl .*?)```", text, re.S)
    rest = re.findall(r"curl .*?http://localhost:8501/v1/models/(\w+):predict \\\n\s+-d '(.*?)'",
                      curl, re.S)
    return found, rest


# Runs in a fresh interpreter that cannot import labse_tf: only what users install.
LOAD_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

with open(sys.argv[1]) as f:
    spec = json.load(f)
export_dir, blocks = spec["export_dir"], spec["blocks"]
arrays, info = {}, {"errors": {}}


def readme(name):
    namespace = {}
    exec(blocks[name].replace("runs/demo/export", export_dir), namespace)
    return namespace


def strings(values):
    return [v.decode() for v in tf.constant(values).numpy()]


def error(fn):
    try:
        fn()
    except Exception as e:  # the message is what the test checks
        return f"{type(e).__name__}: {e}"
    return None


def names(signature):
    return {"inputs": {k: [v.dtype.name, v.shape.as_list()]
                       for k, v in signature.structured_input_signature[1].items()},
            "outputs": {k: [v.dtype.name, v.shape.as_list()]
                        for k, v in signature.structured_outputs.items()}}


# --- Before tensorflow-text is imported: which graphs need its ops, and the encoder alone.
info["text_ops"] = {}
for model in ("preprocessor", "encoder", f"serving/{spec['version']}"):
    with tf.io.gfile.GFile(f"{export_dir}/{model}/saved_model.pb", "rb") as f:
        graph = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    info["text_ops"][model] = sorted(op for op in ops if op_def_registry.get(op) is None)
info["errors"]["preprocessor_without_tf_text"] = error(
    lambda: tf.saved_model.load(f"{export_dir}/preprocessor"))
ns = readme("encoder_attributes")  # hub.load
with open(ns["vocab_file"], encoding="utf-8") as f:
    info["encoder_vocab"] = f.read()
info["do_lower_case"] = ns["do_lower_case"]
encoder_signature = tf.saved_model.load(f"{export_dir}/encoder").signatures["serving_default"]
info["encoder_signature"] = names(encoder_signature)
packed_in = {k: tf.constant(v, tf.int32) for k, v in spec["packed"].items()}
for key, value in encoder_signature(**packed_in).items():
    arrays["encoder_signature_" + key] = value.numpy()
info["errors"]["encoder_too_long"] = error(lambda: encoder_signature(
    **{k: tf.zeros([1, spec["too_long"]], tf.int32) for k in packed_in}))
info["tf_text_before_import"] = "tensorflow_text" in sys.modules

import tensorflow_text  # noqa: F401,E402  (registers the tokenizer ops, as users must)
import tensorflow_hub as hub  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow_serving.apis import (predict_pb2, prediction_log_pb2,  # noqa: E402
                                     prediction_service_pb2_grpc)

text = tf.constant(spec["sentences"])

# TF Hub layers, as the LaBSE v2 model card uses them (README example, then our sentences).
ns = readme("hub")
arrays["readme_hub"], info["readme_hub"] = ns["embeddings"].numpy(), strings(ns["sentences"])
preprocessor, encoder = ns["preprocessor"], ns["encoder"]
packed = preprocessor(text)
outputs = encoder(packed)
for key in ("default", "pooled_output", "sequence_output"):
    arrays["hub_" + key] = outputs[key].numpy()
arrays["hub_encoder_outputs"] = np.stack([x.numpy() for x in outputs["encoder_outputs"]])
arrays["hub_again"] = encoder(preprocessor(text))["default"].numpy()
for key, value in packed.items():
    arrays["packed_" + key] = value.numpy()
info["packed_dtypes"] = {key: value.dtype.name for key, value in packed.items()}

# The reusable-SavedModel object: training flag, variables.
module = tf.saved_model.load(export_dir + "/encoder")
arrays["train_false"] = module(packed, training=False)["default"].numpy()
arrays["train_true"] = module(packed, training=True)["default"].numpy()
info["variables"] = [len(module.variables), len(module.trainable_variables),
                     len(module.regularization_losses)]

# The preprocessor's parts: tokenize, another seq_length, pairs, pieces (README example).
ns = readme("pack")
arrays["pack_embeddings"] = ns["embeddings"].numpy()
info["pack_sentences"] = strings(ns["sentences"])
info["special_tokens"] = {k: int(v) for k, v in ns["special"].items()}
arrays["pieces_input_word_ids"] = ns["pieces"]["input_word_ids"].numpy()
pre_module, tokenize, pack = ns["preprocessor"], ns["tokenize"], ns["pack"]
info["tokens"] = pre_module.tokenize(text).to_list()
packed_2 = pack([tokenize(text)])
arrays["seq2_ids"] = packed_2["input_word_ids"].numpy()
arrays["seq2_default"] = encoder(packed_2)["default"].numpy()
pair = pack([tokenize(tf.constant(spec["pair"][0])), tokenize(tf.constant(spec["pair"][1]))])
for key, value in pair.items():
    arrays["pair_" + key] = value.numpy()
merged = [tokenize(tf.constant(side)).merge_dims(-2, -1) for side in spec["pair"]]
arrays["pair_pieces_input_word_ids"] = pack(merged)["input_word_ids"].numpy()

# The preprocessor's and the serving model's signatures.
pre_signature = pre_module.signatures["serving_default"]
info["preprocessor_signature"] = names(pre_signature)
for key, value in pre_signature(text=text).items():
    arrays["preprocessor_signature_" + key] = value.numpy()
serving_dir = f"{export_dir}/serving/{spec['version']}"
serving = tf.saved_model.load(serving_dir)
signature = serving.signatures["serving_default"]
info["signature"] = names(signature)
arrays["serving"] = signature(text=text)["embeddings"].numpy()

# Odd inputs, empty batches and wrong inputs.
bad = tf.constant([bytes.fromhex(h) for h in spec["bad_hex"]])
arrays["bad_batch"] = signature(text=bad)["embeddings"].numpy()
arrays["bad_single"] = np.concatenate([signature(text=bad[i:i + 1])["embeddings"].numpy()
                                       for i in range(len(spec["bad_hex"]))])
arrays["bad_hub"] = encoder(preprocessor(bad))["default"].numpy()
empty = tf.constant([], tf.string)
arrays["empty_serving"] = signature(text=empty)["embeddings"].numpy()
arrays["empty_hub"] = encoder(preprocessor(empty))["default"].numpy()
grid = tf.constant([spec["sentences"][:2], spec["sentences"][2:4]])
info["errors"].update({
    "serving_int": error(lambda: signature(text=tf.constant([1, 2]))),
    "serving_rank2": error(lambda: signature(text=grid)),
    "preprocessor_rank2": error(lambda: pre_signature(text=grid)),
    "encoder_int64": error(lambda: module({k: tf.cast(v, tf.int64) for k, v in packed.items()})),
    "encoder_rank1": error(lambda: module({k: v[0] for k, v in packed.items()})),
    "pack_too_long": error(lambda: pre_module.bert_pack_inputs(
        [pre_module.tokenize(text)], seq_length=spec["too_long"])),
})

# TF Serving: the warm-up records, the README's REST bodies and gRPC example.
info["warmup"] = []
for record in tf.data.TFRecordDataset(serving_dir + "/assets.extra/tf_serving_warmup_requests"):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    result = signature(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    info["warmup"].append({"model": request.model_spec.name,
                           "signature": request.model_spec.signature_name,
                           "shape": list(result["embeddings"].shape),
                           "finite": bool(np.isfinite(result["embeddings"].numpy()).all())})
served = {"labse": serving, "labse_preprocessor": pre_module, "labse_encoder": module}
info["rest"] = []
for i, (model, body) in enumerate(spec["rest"]):
    body = json.loads(body)
    if "instances" in body:  # the row format: one dict per instance, keyed by input name
        inputs = {k: [instance[k] for instance in body["instances"]] for k in body["instances"][0]}
    else:  # the columnar format
        inputs = body["inputs"]
    info["rest"].append({"model": model, "signature": body["signature_name"], "inputs": inputs})
    for key, value in served[model].signatures[body["signature_name"]](
            **{k: tf.constant(v) for k, v in inputs.items()}).items():
        arrays[f"rest{i}_{key}"] = value.numpy()


class Stub:
    """Answers Predict in-process, as the server would, through the loaded signatures."""

    def __init__(self, channel):
        pass

    def Predict(self, request, timeout=None):
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        info.setdefault("grpc_requests", []).append(
            {"model": request.model_spec.name, "signature": request.model_spec.signature_name,
             "inputs": {k: v.numpy().tolist() if v.dtype != tf.string else strings(v)
                        for k, v in inputs.items()}})
        outputs = served[request.model_spec.name].signatures[
            request.model_spec.signature_name](**inputs)
        response = predict_pb2.PredictResponse()
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


prediction_service_pb2_grpc.PredictionServiceStub = Stub
ns = readme("grpc")
arrays["grpc_embeddings"] = ns["embeddings"]
for key, value in ns["outputs"].items():
    arrays["grpc_encoder_" + key] = value

# Keras 3: TFSMLayer on each model.
ns = readme("keras3")
arrays["keras3"], info["keras3"] = ns["embeddings"], list(ns["sentences"])
for key, value in ns["outputs"].items():
    arrays["keras3_encoder_" + key] = np.asarray(value)

# Fine-tuning a few steps in a tf_keras classifier.
ns = readme("finetune")
before = [v.numpy() for v in ns["encoder"].trainable_variables]
history = ns["classifier"].fit(text[:4], np.array([0, 1, 0, 1]), batch_size=2, verbose=0)
after = [v.numpy() for v in ns["encoder"].trainable_variables]
info["finetune"] = {"variables": len(before), "loss": history.history["loss"],
                    "changed": sum(not np.array_equal(a, b) for a, b in zip(before, after))}

info["labse_tf_imported"] = sorted(m for m in sys.modules if m.startswith("labse_tf"))
np.savez(spec["out"] + ".npz", **arrays)
with open(spec["out"] + ".json", "w") as f:
    json.dump(info, f)
'''


def _run(args, cwd, env=None, returncode=0):
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == returncode, (
        f"{args[:2]} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-6000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def first_checkpoint(tiny_run):
    """The run's oldest checkpoint, so exporting a given one (not the latest) is tested."""
    state = tf.train.get_checkpoint_state(os.path.join(tiny_run, rundir.CHECKPOINT_DIR))
    first, latest = state.all_model_checkpoint_paths[0], state.model_checkpoint_path
    assert first != latest
    return first


@pytest.fixture(scope="module")
def exported(tiny_run, first_checkpoint, tmp_path_factory):
    """Exports with the command line, then moves the export (it must be relocatable)."""
    base = tmp_path_factory.mktemp("export")
    out = str(base / "out")
    stdout = _run(["-m", "labse_tf.export", f"--model_dir={tiny_run}", f"--export_dir={out}",
                   f"--seq_length={SEQ_LENGTH}", f"--checkpoint={first_checkpoint}"], cwd=ROOT)
    moved = str(base / "moved")
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    return {"dir": moved, "original": out, "stdout": stdout}


@pytest.fixture(scope="module")
def reference(tiny_run, first_checkpoint):
    """The in-memory preprocessor and encoder of the exported checkpoint."""
    _, preprocessor, encoder, _ = checkpoints.load_run(tiny_run, first_checkpoint, SEQ_LENGTH)
    return preprocessor, encoder


def _in_memory(reference, sentences, seq_length=None):
    """In-memory packed inputs and encoder outputs (inference mode) as NumPy."""
    preprocessor, _ = reference
    packed = preprocessor(tf.constant(sentences, tf.string), seq_length)
    return _encode(reference, {k: v.numpy() for k, v in packed.items()})


def _encode(reference, packed):
    """In-memory encoder outputs on packed inputs (keras-hub names), with the inputs."""
    outputs = reference[1]({k: tf.constant(packed[k]) for k in INPUT_NAMES}, training=False)
    result = dict(packed)
    result.update(embedding=outputs["embedding"].numpy(),
                  sequence_output=outputs["sequence_output"].numpy(),
                  encoder_outputs=np.stack([x.numpy() for x in outputs["encoder_outputs"]]))
    return result


def _hub(packed):
    """Packed inputs under the TF Hub names."""
    return {hub: packed[name] for hub, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES)}


@pytest.fixture(scope="module")
def loaded(exported, reference, tmp_path_factory):
    """What a fresh process (never importing labse_tf) computes from the moved export."""
    work = tmp_path_factory.mktemp("load")
    blocks, rest = _readme_blocks()
    packed = _hub(_in_memory(reference, SENTENCES))
    spec = {"export_dir": exported["dir"], "version": 1, "sentences": SENTENCES,
            "bad_hex": [b.hex() for b in BAD.values()], "pair": PAIR, "too_long": TOO_LONG,
            "packed": {k: v.tolist() for k, v in packed.items()},
            "rest": rest, "blocks": blocks, "out": str(work / "result")}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "load.py").write_text(LOAD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([str(work / "load.py"), str(work / "spec.json")], cwd=str(work), env=env)
    with np.load(spec["out"] + ".npz") as f:
        arrays = dict(f)
    with open(spec["out"] + ".json") as f:
        return arrays, json.load(f)


@pytest.mark.slow
def test_command_line_writes_the_layout(exported, tiny_run, first_checkpoint):
    for kind, path in [("preprocessor", "preprocessor"), ("encoder", "encoder"),
                       ("serving", os.path.join("serving", "1"))]:
        assert f"{kind}: {os.path.join(exported['original'], path)}" in exported["stdout"]
        assert os.path.exists(os.path.join(exported["dir"], path, "saved_model.pb"))
    assert f"exported {first_checkpoint} (seq_length {SEQ_LENGTH})" in exported["stdout"]
    assert os.listdir(os.path.join(exported["dir"], "serving")) == ["1"]  # no temporary left
    assert sorted(os.listdir(exported["dir"])) == ["encoder", "preprocessor", "serving"]
    with open(os.path.join(tiny_run, "vocab.txt"), "rb") as f:
        vocab = f.read()
    for model in ("preprocessor", "encoder", os.path.join("serving", "1")):
        with open(os.path.join(exported["dir"], model, "assets", "vocab.txt"), "rb") as f:
            assert f.read() == vocab
        with open(os.path.join(exported["dir"], model, "saved_model.pb"), "rb") as f:
            assert tiny_run.encode() not in f.read()  # the asset is found relative to the model


@pytest.mark.slow
def test_command_line_help():
    stdout = _run(["-m", "labse_tf.export", "--help"], cwd=ROOT, returncode=1)  # absl's choice
    for flag in ("--model_dir", "--export_dir", "--seq_length", "--checkpoint", "--version"):
        assert flag in stdout


@pytest.mark.slow
def test_loading_process_never_imports_labse_tf(loaded):
    assert loaded[1]["labse_tf_imported"] == []


@pytest.mark.slow
def test_only_the_tokenizing_models_need_tensorflow_text(loaded):
    info = loaded[1]
    assert not info["tf_text_before_import"]
    assert info["text_ops"] == {"preprocessor": TEXT_OPS, "encoder": [], "serving/1": TEXT_OPS}
    assert "Op type not registered" in info["errors"]["preprocessor_without_tf_text"]
    # export/README.md names exactly these ops.
    paragraph = _readme().split("**Which models need tensorflow-text.**")[1].split("\n\n")[0]
    ops = paragraph.split("ops:")[1].split("In Python")[0]
    assert sorted(re.findall(r"`([\w>]+)`", ops)) == TEXT_OPS


@pytest.mark.slow
def test_hub_layers_match_in_memory_model(loaded, reference):
    arrays, info = loaded
    ref = _in_memory(reference, SENTENCES)
    assert info["packed_dtypes"] == {name: "int32" for name in export.HUB_INPUT_NAMES}
    for hub_name, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES):
        np.testing.assert_array_equal(arrays["packed_" + hub_name], ref[name])
    assert arrays["hub_default"].shape == (len(SENTENCES), DIM)
    np.testing.assert_allclose(arrays["hub_default"], ref["embedding"], atol=ATOL)
    np.testing.assert_array_equal(arrays["hub_pooled_output"], arrays["hub_default"])
    np.testing.assert_allclose(arrays["hub_sequence_output"], ref["sequence_output"], atol=ATOL)
    np.testing.assert_allclose(arrays["hub_encoder_outputs"], ref["encoder_outputs"], atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(arrays["hub_default"], axis=1), 1.0, atol=1e-5)
    tokens = reference[0].tokenize(tf.constant(SENTENCES)).to_list()
    assert info["tokens"] == tokens
    readme = _in_memory(reference, info["readme_hub"])
    np.testing.assert_allclose(arrays["readme_hub"], readme["embedding"], atol=ATOL)


@pytest.mark.slow
def test_reusable_savedmodel_interface(loaded, reference):
    arrays, info = loaded
    encoder = reference[1]
    assert info["variables"] == [len(encoder.variables), len(encoder.trainable_variables), 0]
    # Dropout is off at inference and on with training=True.
    np.testing.assert_array_equal(arrays["hub_again"], arrays["hub_default"])
    np.testing.assert_array_equal(arrays["train_false"], arrays["hub_default"])
    assert np.abs(arrays["train_true"] - arrays["train_false"]).max() > 1e-3


@pytest.mark.slow
def test_encoder_carries_vocab_file_and_do_lower_case(loaded, tiny_run):
    info = loaded[1]
    with open(os.path.join(tiny_run, "vocab.txt"), encoding="utf-8") as f:
        assert info["encoder_vocab"] == f.read()
    assert info["do_lower_case"] is config_lib.load_config(
        os.path.join(tiny_run, "config.yaml")).data.lowercase is True


@pytest.mark.slow
def test_special_tokens_dict(loaded, reference):
    preprocessor = reference[0]
    assert loaded[1]["special_tokens"] == {
        "vocab_size": preprocessor.vocab_size, "start_of_sequence_id": 2,
        "end_of_segment_id": 3, "padding_id": 0, "mask_id": 4}
    assert preprocessor.vocab_size > 1000  # the vocabulary, not a default


@pytest.mark.slow
def test_another_seq_length_pairs_and_segments_of_pieces(loaded, reference):
    arrays, info = loaded
    ref = _in_memory(reference, SENTENCES, SEQ_LENGTH_2)
    assert arrays["seq2_ids"].shape == (len(SENTENCES), SEQ_LENGTH_2)
    np.testing.assert_array_equal(arrays["seq2_ids"], ref["token_ids"])
    np.testing.assert_allclose(arrays["seq2_default"], ref["embedding"], atol=ATOL)
    readme = _in_memory(reference, info["pack_sentences"], SEQ_LENGTH_2)
    np.testing.assert_allclose(arrays["pack_embeddings"], readme["embedding"], atol=ATOL)
    # Rank-1 segments ([batch, (pieces)]) pack as their words do.
    np.testing.assert_array_equal(arrays["pieces_input_word_ids"], readme["token_ids"])
    preprocessor = reference[0]
    segments = [preprocessor.tokenize(tf.constant(side)) for side in PAIR]
    pair = preprocessor.bert_pack_inputs(segments, SEQ_LENGTH_2)
    for hub_name, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES):
        np.testing.assert_array_equal(arrays["pair_" + hub_name], pair[name].numpy())
    np.testing.assert_array_equal(arrays["pair_pieces_input_word_ids"],
                                  arrays["pair_input_word_ids"])
    # Round-robin: the long pair fills the length with both segments (type ids 0 and 1).
    long_pair = arrays["pair_input_type_ids"][0]
    assert arrays["pair_input_mask"][0].sum() == SEQ_LENGTH_2
    assert abs(int((long_pair == 0).sum()) - int((long_pair == 1).sum())) <= 2


@pytest.mark.slow
def test_signatures_have_the_tf_serving_names_and_match_in_memory_model(loaded, reference):
    arrays, info = loaded
    ref = _in_memory(reference, SENTENCES)
    assert info["signature"] == {"inputs": {"text": ["string", [None]]},
                                 "outputs": {"embeddings": ["float32", [None, DIM]]}}
    np.testing.assert_allclose(arrays["serving"], ref["embedding"], atol=ATOL)
    assert info["preprocessor_signature"] == {
        "inputs": {"text": ["string", [None]]},
        "outputs": {name: ["int32", [None, SEQ_LENGTH]] for name in export.HUB_INPUT_NAMES}}
    for hub_name, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES):
        np.testing.assert_array_equal(arrays["preprocessor_signature_" + hub_name], ref[name])
    assert info["encoder_signature"] == {
        "inputs": {name: ["int32", [None, None]] for name in export.HUB_INPUT_NAMES},
        "outputs": {"default": ["float32", [None, DIM]],
                    "pooled_output": ["float32", [None, DIM]],
                    "sequence_output": ["float32", [None, None, DIM]]}}
    # Called without tensorflow-text loaded, on ids packed in memory.
    np.testing.assert_allclose(arrays["encoder_signature_default"], ref["embedding"], atol=ATOL)
    np.testing.assert_array_equal(arrays["encoder_signature_pooled_output"],
                                  arrays["encoder_signature_default"])
    np.testing.assert_allclose(arrays["encoder_signature_sequence_output"],
                               ref["sequence_output"], atol=ATOL)


@pytest.mark.slow
def test_bad_inputs_give_unit_embeddings_or_clear_errors(loaded, reference):
    arrays, info = loaded
    ref = _in_memory(reference, list(BAD.values()))["embedding"]
    for name in ("bad_batch", "bad_single", "bad_hub"):
        assert np.isfinite(arrays[name]).all(), name
        np.testing.assert_allclose(arrays[name], ref, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(np.linalg.norm(arrays["bad_batch"], axis=1), 1.0, atol=1e-5)
    # Whitespace and control characters carry no tokens: they embed like the empty string.
    names = list(BAD)
    for name in ("whitespace", "control characters"):
        np.testing.assert_allclose(arrays["bad_batch"][names.index(name)],
                                   arrays["bad_batch"][names.index("empty")], atol=ATOL)
    assert arrays["empty_serving"].shape == (0, DIM)
    assert arrays["empty_hub"].shape == (0, DIM)
    errors = info["errors"]
    assert "string" in errors["serving_int"] and "int32" in errors["serving_int"]
    for name in ("serving_rank2", "preprocessor_rank2"):  # refused, not flattened to 4 rows
        assert "Shape of tensor text [2,2] is not compatible with expected shape [?]" in (
            errors[name]), name
    assert "int32" in errors["encoder_int64"] and "int64" in errors["encoder_int64"]
    assert "shape=(None, None)" in errors["encoder_rank1"]
    assert f"shape=({SEQ_LENGTH},)" in errors["encoder_rank1"]
    assert (f"bert_pack_inputs: seq_length={TOO_LONG} is more than the encoder accepts "
            f"(max_sequence_length={MAX_SEQ_LENGTH})") in errors["pack_too_long"]
    assert (f"seq_length must be at most max_sequence_length={MAX_SEQ_LENGTH}"
            in errors["encoder_too_long"])


@pytest.mark.slow
def test_tf_serving_requests(loaded, reference):
    arrays, info = loaded
    assert [(w["model"], w["signature"], w["shape"], w["finite"]) for w in info["warmup"]] == [
        (export.MODEL_NAME, "serving_default", [1, DIM], True),
        (export.MODEL_NAME, "serving_default", [4, DIM], True)]
    # REST: the README's three requests, one per served model.
    rest = info["rest"]
    assert [(r["model"], r["signature"]) for r in rest] == [
        (name, "serving_default") for name in SERVED]
    np.testing.assert_allclose(arrays["rest0_embeddings"],
                               _in_memory(reference, rest[0]["inputs"]["text"])["embedding"],
                               atol=ATOL)
    ref = _in_memory(reference, rest[1]["inputs"]["text"])
    for hub_name, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES):
        np.testing.assert_array_equal(arrays["rest1_" + hub_name], ref[name])
    ids = rest[2]["inputs"]
    ref = _encode(reference, {name: np.array(ids[hub], np.int32)
                              for hub, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES)})
    np.testing.assert_allclose(arrays["rest2_default"], ref["embedding"], atol=ATOL)
    np.testing.assert_allclose(arrays["rest2_sequence_output"], ref["sequence_output"],
                               atol=ATOL)
    # gRPC: the README's client, answered by the loaded signatures.
    requests = info["grpc_requests"]
    assert [(r["model"], r["signature"]) for r in requests] == [
        (name, "serving_default") for name in SERVED]
    sentences = requests[0]["inputs"]["text"]
    ref = _in_memory(reference, sentences)
    np.testing.assert_allclose(arrays["grpc_embeddings"], ref["embedding"], atol=ATOL)
    assert requests[1]["inputs"] == {"text": sentences}
    assert requests[2]["inputs"] == {hub: ref[name].tolist()
                                     for hub, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES)}
    np.testing.assert_allclose(arrays["grpc_encoder_default"], ref["embedding"], atol=ATOL)
    np.testing.assert_allclose(arrays["grpc_encoder_sequence_output"], ref["sequence_output"],
                               atol=ATOL)


@pytest.mark.slow
def test_models_config_serves_each_model_from_where_the_readme_mounts_it():
    with open(MODELS_CONFIG) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    models = {m.name: m for m in config.model_config_list.config}
    assert list(models) == list(SERVED)
    assert {m.model_platform for m in models.values()} == {"tensorflow"}
    readme = _readme()
    for name, path in SERVED.items():
        # The serving directory holds versions; a single SavedModel is mounted as version 1.
        mount = models[name].base_path + ("" if path.startswith("serving/") else "/1")
        source = "serving" if path.startswith("serving/") else path
        assert f'-v "$PWD/runs/demo/export/{source}:{mount}"' in readme, name


@pytest.mark.slow
def test_keras3_tfsm_layer(loaded, reference):
    arrays, info = loaded
    ref = _in_memory(reference, info["keras3"])
    np.testing.assert_allclose(arrays["keras3"], ref["embedding"], atol=ATOL)
    np.testing.assert_allclose(arrays["keras3_encoder_default"], ref["embedding"], atol=ATOL)
    np.testing.assert_allclose(arrays["keras3_encoder_sequence_output"], ref["sequence_output"],
                               atol=ATOL)


@pytest.mark.slow
def test_fine_tuning_changes_every_encoder_variable(loaded, reference):
    finetune = loaded[1]["finetune"]
    assert finetune["variables"] == len(reference[1].trainable_variables)
    assert finetune["changed"] == finetune["variables"]
    assert np.isfinite(finetune["loss"]).all()


def test_next_version(tmp_path):
    assert export.next_version(str(tmp_path / "missing")) == 1
    for name in ("1", "3", "notes", ".tmp-7"):
        (tmp_path / name).mkdir()
    assert export.next_version(str(tmp_path)) == 4


class _Lengths(tf.Module):
    """An encoder stand-in that returns the packed length it was given, for every row."""

    def __call__(self, inputs, training):
        shape = tf.shape(inputs["input_word_ids"])
        return {"default": tf.cast(tf.fill([shape[0], 1], shape[1]), tf.float32)}


@pytest.mark.slow
def test_serving_model_cuts_padding_to_the_longest_sentence(reference):
    preprocessor, _ = reference
    hub_preprocessor = export.HubPreprocessor(preprocessor, SEQ_LENGTH, MAX_SEQ_LENGTH)
    serving = export.ServingModel(hub_preprocessor, _Lengths())
    for text in (["Hi.", "", "Wie geht es dir heute, mein Freund?"], ["a"], [""]):
        longest = preprocessor(tf.constant(text))["padding_mask"].numpy().sum(1).max()
        assert longest < SEQ_LENGTH
        lengths = serving.serve(tf.constant(text))[export.SERVING_OUTPUT].numpy()[:, 0]
        assert lengths.tolist() == [longest] * len(text), text
    assert serving.serve(tf.constant([], tf.string))[export.SERVING_OUTPUT].shape == (0, 1)


@pytest.mark.slow
def test_export_model_refuses_bad_arguments(reference, tmp_path):
    preprocessor, encoder = reference
    (tmp_path / "serving" / "2").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="serving version 2 exists"):
        export.export_model(preprocessor, encoder, str(tmp_path), seq_length=16, version=2)
    with pytest.raises(ValueError, match=r"seq_length must be in \[3, 64\].*got 65"):
        export.export_model(preprocessor, encoder, str(tmp_path), seq_length=65)


@pytest.mark.slow
def test_encoder_input_errors_name_expected_and_actual(reference):
    hub_encoder = export.HubEncoder(reference[1], reference[0])
    ids = tf.zeros([2, 8], tf.int32)
    inputs = dict.fromkeys(export.HUB_INPUT_NAMES, ids)
    with pytest.raises(TypeError, match=r"'input_word_ids' must be tf.int32 of rank 2 .* got "
                                        r"int64 of rank 2"):
        hub_encoder({**inputs, "input_word_ids": tf.cast(ids, tf.int64)})
    with pytest.raises(TypeError, match=r"'input_mask' must be tf.int32 of rank 2 .* got int32 "
                                        r"of rank 1"):
        hub_encoder({**inputs, "input_mask": ids[0]})
    with pytest.raises(TypeError, match=r"keys \['input_word_ids', 'input_mask', "
                                        r"'input_type_ids'\], got \['token_ids'\]"):
        hub_encoder({"token_ids": ids})
    assert hub_encoder(inputs)["default"].shape == (2, 32)


@pytest.mark.slow
def test_mixed_precision_encoder_exports_float32_outputs(tiny_run, reference):
    cfg = config_lib.load_config(os.path.join(tiny_run, "config.yaml"))
    encoder = build_encoder(cfg.model, reference[0].vocab_size, precision="bf16")
    packed = reference[0](tf.constant(["Hello world.", ""]))
    hub_inputs = {hub: packed[name] for hub, name in zip(export.HUB_INPUT_NAMES, INPUT_NAMES)}
    outputs = export.HubEncoder(encoder, reference[0])(hub_inputs)
    assert {k: v.dtype for k, v in outputs.items() if k != "encoder_outputs"} == dict.fromkeys(
        ["default", "pooled_output", "sequence_output"], tf.float32)
    assert [x.dtype for x in outputs["encoder_outputs"]] == [tf.float32] * cfg.model.num_layers


def _tree(directory: str) -> dict:
    """{relative path: size} of every file under a directory on any filesystem."""
    tree = {}
    for root, _, names in tf.io.gfile.walk(directory):
        for name in names:
            path = f"{root}/{name}"
            if tf.io.gfile.exists(path):  # ram:// also lists assets.extra/* in assets/
                tree[path[len(directory) + 1:]] = tf.io.gfile.stat(path).length
    return tree


@pytest.fixture(scope="module")
def ram_export(reference, tmp_path_factory):
    """An in-process export to ram:// (TF's in-memory filesystem, an object-store stand-in:
    its directory renames are not atomic either), from an empty working directory.

    Every copy is recorded, and when a saved_model.pb is copied, the files its directory
    then holds. A stale staging directory, as an interrupted export leaves, is there first.
    """
    cwd = tmp_path_factory.mktemp("cwd")
    export_dir = f"ram://{cwd.name}/export"
    stale = f"{export_dir}/{export.STAGING_DIR}/serving/variables/variables.index"
    tf.io.gfile.makedirs(files.dirname(stale))
    tf.io.gfile.GFile(stale, "w").close()
    copies, before_pb = [], {}
    copy = files.copy

    def recording_copy(src, dst):
        copies.append(dst)
        if files.basename(dst) == export.SAVED_MODEL_FILE:
            before_pb[files.dirname(dst)] = _tree(files.dirname(dst))
        return copy(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(files, "copy", recording_copy)
        paths = export.export_model(*reference, export_dir, seq_length=SEQ_LENGTH)
    return {"dir": export_dir, "paths": paths, "copies": copies, "before_pb": before_pb,
            "listing": tf.io.gfile.listdir(export_dir), "cwd": os.listdir(cwd),
            "trees": {kind: _tree(path) for kind, path in paths.items()}}


@pytest.mark.slow
def test_export_to_an_object_store_copies_saved_model_pb_last(ram_export):
    assert ram_export["cwd"] == []  # nothing written locally
    assert sorted(ram_export["listing"]) == ["encoder", "preprocessor", "serving"]  # staged away
    assert ram_export["paths"]["serving"] == f"{ram_export['dir']}/serving/1"
    for kind, path in ram_export["paths"].items():
        tree = ram_export["trees"][kind]
        assert {"saved_model.pb", "variables/variables.index"} <= set(tree), kind
        into = [c for c in ram_export["copies"] if c.startswith(path + "/")]
        assert len(into) == len(tree) and into[-1] == f"{path}/saved_model.pb", kind
        # When saved_model.pb arrives, every other file is there, complete.
        expected = {name: size for name, size in tree.items() if name != "saved_model.pb"}
        assert ram_export["before_pb"][path] == expected, kind
    assert export.WARMUP_FILE in ram_export["trees"]["serving"]


@pytest.mark.slow
def test_export_to_an_object_store_loads_in_process(ram_export, reference):
    signature = tf.saved_model.load(ram_export["paths"]["serving"]).signatures["serving_default"]
    np.testing.assert_allclose(signature(text=tf.constant(SENTENCES))["embeddings"].numpy(),
                               _in_memory(reference, SENTENCES)["embedding"], atol=ATOL)


@pytest.mark.slow
def test_interrupted_export_leaves_no_loadable_version(ram_export, reference, monkeypatch):
    copy = files.copy
    broken = f"{ram_export['dir']}/serving/2/variables/variables.index"

    def failing_copy(src, dst):
        if dst == broken:
            raise tf.errors.UnavailableError(None, None, "connection lost")
        return copy(src, dst)

    monkeypatch.setattr(files, "copy", failing_copy)
    with pytest.raises(tf.errors.UnavailableError, match="connection lost"):
        export.export_model(*reference, ram_export["dir"], seq_length=SEQ_LENGTH)
    partial = _tree(f"{ram_export['dir']}/serving/2")
    assert partial and "saved_model.pb" not in partial
    with pytest.raises(OSError, match="SavedModel file does not exist"):
        tf.saved_model.load(f"{ram_export['dir']}/serving/2")
    assert _tree(ram_export["paths"]["serving"]) == ram_export["trees"]["serving"]  # untouched
    assert export.next_version(f"{ram_export['dir']}/serving") == 3
