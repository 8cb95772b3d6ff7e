"""Pre-training: MLM loss, MLM/TLM masking in tf.data, progressive stacking, resume, hand-off."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from labse_tf import config as config_lib, data, gradients, pretrain, train
from labse_tf.losses import masked_lm_loss
from labse_tf.model import build_encoder
from labse_tf.preprocessing import Preprocessor
from labse_tf.rundir import CHECKPOINT_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny twin shortened to 2 + 2 + 2 steps (1, 2, then 4 layers), a checkpoint every step.
SHORT = ["train.steps=6", "pretrain.stage_steps=[2, 2, 2]", "train.checkpoint_every=1",
         "train.steps_per_loop=1", "train.global_batch_size=8"]


def _np_masked_lm_loss(logits, labels, weights):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    xent = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    hits = (logits.argmax(-1) == labels).astype(np.float64)
    return (xent * weights).sum() / weights.sum(), (hits * weights).sum() / weights.sum()


def test_masked_lm_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    labels = np.array([[1, 4, 6], [0, 2, 2]], np.int32)
    labels[0, 0] = logits[0, 0].argmax()  # one certain hit
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    loss, accuracy = masked_lm_loss(logits, labels, weights)
    want_loss, want_accuracy = _np_masked_lm_loss(logits.astype(np.float64), labels, weights)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(accuracy.numpy(), want_accuracy, rtol=1e-6)
    # Padding predictions do not count, whatever their logits; none at all gives 0.
    noisy = logits.copy()
    noisy[weights == 0] = 100 * rng.normal(size=noisy[weights == 0].shape)
    np.testing.assert_allclose(masked_lm_loss(noisy, labels, weights)[0].numpy(), want_loss,
                               rtol=1e-5)
    assert [float(x) for x in masked_lm_loss(logits, labels, 0 * weights)] == [0.0, 0.0]


def _unmask(batch):
    """The packed tokens before masking: the masked positions get their mask_ids back."""
    tokens = batch["token_ids"].copy()
    for row, (positions, ids, weights) in enumerate(zip(
            batch["mask_positions"], batch["mask_ids"], batch["mask_weights"])):
        real = weights > 0
        tokens[row, positions[real]] = ids[real]
    return tokens


def test_masked_lm_dataset_packs_and_masks(sample_manifest, vocab_file):
    pre = Preprocessor(vocab_file, seq_length=32)
    args = {"batch_size": 64, "sampling": data.Sampling(alpha=0.3, seed=3)}
    masking = data.Masking(tlm_fraction=0.5, mask_rate=0.15, mask_token_rate=0.8,
                           random_token_rate=0.1, max_predictions=8)
    examples = data.masked_lm_dataset(sample_manifest, pre, trim=False, masking=masking, **args)
    trimmed = data.masked_lm_dataset(sample_manifest, pre, masking=masking, **args)
    assert trimmed.element_spec["token_ids"].shape.as_list() == [64, None]
    assert trimmed.element_spec["mask_ids"].shape.as_list() == [64, 8]
    for cut, full in zip(trimmed.take(2).as_numpy_iterator(), examples.take(2).as_numpy_iterator()):
        longest = full["padding_mask"].sum(1).max()
        assert cut["token_ids"].shape == (64, longest) and longest < 32
        np.testing.assert_array_equal(cut["segment_ids"], full["segment_ids"][:, :longest])
        np.testing.assert_array_equal(cut["padding_mask"], full["padding_mask"][:, :longest])
        assert (cut["mask_positions"][cut["mask_weights"] > 0] < longest).all()
    drawn = data.pair_strings(sample_manifest, **args)
    specials = [pre.pad_id, pre.cls_id, pre.sep_id, pre.unk_id]
    batches = list(examples.take(4).as_numpy_iterator())
    batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    draws = list(drawn.take(4))
    src, tgt = (pre.tokenize(tf.concat([d[side] for d in draws], 0)) for side in ("src", "tgt"))
    candidates = {name: {k: v.numpy() for k, v in pre.bert_pack_inputs(segments).items()}
                  for name, segments in (("tlm", [src, tgt]), ("src", [src]), ("tgt", [tgt]))}
    assert batch["token_ids"].shape == (256, 32) and batch["mask_positions"].shape == (256, 8)
    original = _unmask(batch)
    kinds, replaced = [], []
    for row in range(256):
        # Unmasked, each example is exactly one packing of its pair (or of one side).
        kind = [name for name, c in candidates.items() if all(
            np.array_equal(c[k][row], original[row] if k == "token_ids" else batch[k][row])
            for k in ("token_ids", "segment_ids", "padding_mask"))]
        assert kind[:1] in (["tlm"], ["src"], ["tgt"]), (row, kind)
        kinds.append(kind[0])
        # ceil(15%) of the selectable wordpieces (float32, as tensorflow-text computes it).
        selectable = np.isin(original[row], specials, invert=True).sum()
        count = int(batch["mask_weights"][row].sum())
        assert count == min(8, int(np.ceil(np.float32(selectable) * np.float32(0.15))))
        positions = batch["mask_positions"][row, :count]
        assert len(set(positions)) == count
        assert not np.isin(original[row, positions], specials).any()
        assert (batch["mask_ids"][row, count:] == 0).all()
        replaced += [("mask" if t == pre.mask_id else "keep" if t == o else "random")
                     for t, o in zip(batch["token_ids"][row, positions], original[row, positions])]
    kinds, replaced = np.array(kinds), np.array(replaced)
    assert abs(np.mean(kinds == "tlm") - 0.5) < 0.15
    assert np.mean(kinds == "src") > 0.15 and np.mean(kinds == "tgt") > 0.15
    # 80/10/10; a random token equal to the original counts as kept (p = 1/vocab).
    assert len(replaced) > 500
    assert abs(np.mean(replaced == "mask") - 0.8) < 0.06
    assert abs(np.mean(replaced == "keep") - 0.1) < 0.05
    assert abs(np.mean(replaced == "random") - 0.1) < 0.05


def test_plan_stages_splits_the_step_counter():
    cfg = config_lib.load_config("labse_pretrain")
    stages = pretrain.plan_stages(cfg, "run")
    assert [(s.number, s.num_layers, s.start, s.end) for s in stages] == [
        (1, 3, 0, 400_000), (2, 6, 400_000, 1_200_000), (3, 12, 1_200_000, 3_000_000)]
    assert [s.model_dir for s in stages] == [os.path.join("run", "stages", "1"),
                                              os.path.join("run", "stages", "2"), "run"]
    skipped = config_lib.override(cfg, ["pretrain.stage_steps=[0, 10, 20]", "train.steps=30"])
    assert [(s.number, s.num_layers) for s in pretrain.plan_stages(skipped, "run")] == [
        (2, 6), (3, 12)]
    with pytest.raises(config_lib.ConfigError, match="pretrain.stage_steps.*train.steps"):
        pretrain.plan_stages(config_lib.override(cfg, ["train.steps=10"]), "run")
    with pytest.raises(config_lib.ConfigError, match="model.num_layers: 6 .* 4"):
        pretrain.plan_stages(config_lib.override(cfg, ["model.num_layers=6"]), "run")


def _layer(model, i):
    return [v.numpy() for v in model.weights if v.path.startswith(f"transformer_layer_{i}/")]


def test_pretraining_refuses_a_time_budget(tmp_path):
    cfg = config_lib.load_config("tiny_pretrain", ["train.time_budget_minutes=5"])
    with pytest.raises(config_lib.ConfigError, match="train.time_budget_minutes: pre-training"):
        pretrain.pretrain(cfg, strategy=tf.distribute.get_strategy(), model_dir=str(tmp_path),
                          train_patterns=[data.sample_corpus_path("train")])


def test_a_bad_language_group_is_a_one_line_error(tmp_path, vocab_file):
    out = subprocess.run([sys.executable, "-m", "labse_tf.pretrain", f"--model_dir={tmp_path}",
                          "--strategy=mirrored", "--cpu_replicas=2", "--set",
                          "data.language_group=32", "--set", f"data.vocab_file={vocab_file}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1
    assert ("error: data.language_group: 32 does not divide the batch of each of the 2 "
            "replicas (16 pairs)") in out.stderr
    assert "Traceback" not in out.stderr


def test_stack_layers_repeats_the_old_stack():
    small = config_lib.ModelConfig(num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32)
    source = pretrain.build_masked_lm(small, 50)
    target = pretrain.build_masked_lm(config_lib.ModelConfig(
        num_layers=4, hidden_dim=16, num_heads=2, intermediate_dim=32), 50)
    assert not np.array_equal(_layer(source, 0)[0], _layer(source, 1)[0])
    pretrain.stack_layers(source, target)
    for i in range(4):  # layer i = old layer i mod 2
        for new, old in zip(_layer(target, i), _layer(source, i % 2), strict=True):
            np.testing.assert_array_equal(new, old)
    rest = {v.path: v.numpy() for v in source.weights
            if not v.path.startswith("transformer_layer_")}
    assert {"token_embedding/embeddings", "pooled_dense/kernel", "mlm_head/output_bias"} <= rest.keys()
    for v in target.weights:
        if v.path in rest:
            np.testing.assert_array_equal(v.numpy(), rest[v.path])
    wider = pretrain.build_masked_lm(config_lib.ModelConfig(
        num_layers=4, hidden_dim=32, num_heads=2, intermediate_dim=32), 50)
    with pytest.raises(ValueError, match="no source of that shape"):
        pretrain.stack_layers(source, wider)


def test_two_replica_gradients_match_one():
    """Two replicas' summed gradients equal one replica's on the same global batch."""
    cfg = config_lib.ModelConfig(num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32,
                                 dropout=0.0)
    rng = np.random.default_rng(0)
    lengths = np.array([8, 5, 7, 3])
    padding = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
    # Replica 0 gets 3 + 2 predictions, replica 1 gets 1 + 2: unequal shares of the mean.
    weights = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]], np.float32)
    batch = {"token_ids": rng.integers(5, 50, (4, 8)).astype(np.int32) * padding,
             "padding_mask": padding, "segment_ids": np.zeros((4, 8), np.int32),
             "mask_positions": np.array([[1, 3, 6], [2, 4, 0], [1, 0, 0], [1, 2, 0]], np.int32),
             "mask_ids": rng.integers(5, 50, (4, 3)).astype(np.int32), "mask_weights": weights}
    batch = {k: tf.constant(v) for k, v in batch.items()}
    # As `--strategy=mirrored --cpu_replicas=2` builds it.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = pretrain.build_masked_lm(cfg, 50)
    variables = pretrain.mlm_variables(model)
    forward = lambda b: model({k: b[k] for k in model.input}, training=True)
    want, _ = gradients.mlm_gradients(forward, variables, batch)
    halves = strategy.experimental_distribute_values_from_function(
        lambda ctx: {k: v[2 * ctx.replica_id_in_sync_group:][:2] for k, v in batch.items()})
    got, _ = tf.function(lambda b: strategy.run(
        lambda x: gradients.mlm_gradients(forward, variables, x), args=(b,)))(halves)
    for g, w in zip(got, want, strict=True):
        for local in strategy.experimental_local_results(g):  # the same on both replicas
            np.testing.assert_allclose(tf.convert_to_tensor(local), tf.convert_to_tensor(w),
                                       atol=2e-6)


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, vocab_file):
    """A tiny pre-training run through all three stages, from the command line."""
    model_dir = str(tmp_path_factory.mktemp("pretrain"))
    sets = [a for s in SHORT + [f"data.vocab_file={vocab_file}"] for a in ("--set", s)]
    out = subprocess.run([sys.executable, "-m", "labse_tf.pretrain", f"--model_dir={model_dir}",
                          *sets],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return model_dir, out.stdout


def _restores_at_depth(path, num_layers, vocab_size) -> bool:
    """Whether checkpoint `path` holds every weight of a `num_layers`-layer masked LM."""
    cfg = config_lib.load_config("tiny_pretrain", [f"model.num_layers={num_layers}"])
    model = pretrain.build_masked_lm(cfg.model, vocab_size)
    status = tf.train.Checkpoint(encoder=model.get_layer("encoder"),
                                 mlm_head=model.get_layer("mlm_head")).read(path).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        return False
    return True


@pytest.mark.slow
def test_pretrain_switches_stages_at_the_configured_steps(pretrain_run, vocab_file):
    model_dir, stdout = pretrain_run
    lines = stdout.splitlines()
    stage_of_step, stage = {}, 0
    for line in lines:
        if line.startswith("stage "):
            stage = int(line.split()[1].rstrip(":"))
        elif line.startswith("step "):
            stage_of_step[int(line.split()[1].split("/")[0])] = stage
    assert stage_of_step == {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}
    assert "stage 2: 2-layer encoder (stacked from 1 layers)" in stdout
    assert "stage 3: 4-layer encoder (stacked from 2 layers)" in stdout
    vocab_size = Preprocessor(vocab_file).vocab_size
    for where, step, layers in (("stages/1", 2, 1), ("stages/2", 4, 2), ("", 6, 4)):
        latest = tf.train.latest_checkpoint(os.path.join(model_dir, where, CHECKPOINT_DIR))
        assert latest.endswith(f"ckpt-{step}")
        assert tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE") == step
        assert _restores_at_depth(latest, layers, vocab_size)
        assert not _restores_at_depth(latest, 2 * layers, vocab_size)
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert [(s["num_layers"], s["start_step"], s["end_step"]) for s in summary["stages"]] == [
        (1, 0, 2), (2, 2, 4), (4, 4, 6)]
    assert all(np.isfinite(s["final_metrics"]["loss"]) for s in summary["stages"])


@pytest.mark.slow
def test_resume_rebuilds_the_stage_and_goes_on(pretrain_run, vocab_file, tmp_path):
    """Stopped at the end of stage 2: resumes there, stacks and runs stage 3."""
    source, _ = pretrain_run
    model_dir = str(tmp_path / "run")
    shutil.copytree(source, model_dir)
    shutil.rmtree(os.path.join(model_dir, CHECKPOINT_DIR))
    cfg = config_lib.load_config("tiny_pretrain", SHORT + [f"data.vocab_file={vocab_file}"])
    logs = []
    summary = pretrain.pretrain(
        cfg, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), model_dir=model_dir,
        train_patterns=[data.sample_corpus_path("train")], log=logs.append)
    stage2 = os.path.join(model_dir, "stages", "2", CHECKPOINT_DIR, "ckpt-4")
    assert f"resumed stage 2 from {stage2} at step 4" in logs
    assert any(line.startswith("stage 3: 4-layer encoder (stacked from 2 layers)") for line in logs)
    steps = [int(line.split()[1].split("/")[0]) for line in logs if line.startswith("step ")]
    assert steps == [5, 6]
    assert summary["step"] == 6
    assert summary["checkpoint"] == os.path.join(model_dir, CHECKPOINT_DIR, "ckpt-6")
    assert [s["num_layers"] for s in summary["stages"]] == [2, 4]


def _pretrained_encoder(model_dir, cfg, vocab_size):
    """The final encoder of a pre-training run, restored with its MLM head."""
    model = pretrain.build_masked_lm(cfg.model, vocab_size)
    path = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR))
    tf.train.Checkpoint(encoder=model.get_layer("encoder"), mlm_head=model.get_layer("mlm_head")
                        ).read(path).expect_partial().assert_existing_objects_matched()
    return {v.path: v.numpy() for v in model.get_layer("encoder").weights}


@pytest.mark.slow
def test_dual_encoder_starts_from_the_pretrained_encoder(pretrain_run, tmp_path):
    model_dir, _ = pretrain_run
    cfg = config_lib.load_config(os.path.join(model_dir, "config.yaml"))
    vocab_size = cfg.model.vocab_size
    pretrained = _pretrained_encoder(model_dir, cfg, vocab_size)
    # What labse_tf.train --init_checkpoint does to a fresh encoder: every weight arrives.
    encoder = build_encoder(cfg.model, vocab_size)
    train.init_from_pretrained(encoder, model_dir, log=lambda m: None)
    assert {v.path for v in encoder.weights} == set(pretrained)
    for v in encoder.weights:
        np.testing.assert_array_equal(v.numpy(), pretrained[v.path])
    # The whole hand-off: vocabulary copied, encoder restored, then one step at a learning
    # rate too small to move any weight by 1e-6.
    run_dir = str(tmp_path / "dual")
    dual = config_lib.load_config("tiny", ["model.num_layers=4", "train.steps=1",
                                           "train.learning_rate=1e-9", "train.checkpoint_every=1"])
    logs = []
    train.train(dual, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), model_dir=run_dir,
                train_patterns=[data.sample_corpus_path("train")], init_checkpoint=model_dir,
                log=logs.append)
    final = os.path.join(model_dir, CHECKPOINT_DIR, "ckpt-6")
    assert f"initialised the encoder from {final}" in logs
    with open(os.path.join(run_dir, "vocab.txt"), "rb") as a, \
            open(os.path.join(model_dir, "vocab.txt"), "rb") as b:
        assert a.read() == b.read()
    trained = build_encoder(dual.model, vocab_size)
    train.init_from_pretrained(trained, run_dir, log=lambda m: None)
    for v in trained.weights:
        np.testing.assert_allclose(v.numpy(), pretrained[v.path], atol=1e-6)
