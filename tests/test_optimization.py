"""The AdamW update against NumPy: fused dense updates, embedding gradients, lazy rows."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from labse_tf.config import OptimizerConfig
from labse_tf.optimization import WarmupDecay, build_optimizer, retarget_decay

LR, WD, CLIP = 0.05, 0.1, 1.0
SHAPES = {"embeddings": (6, 3), "kernel": (3, 2), "bias": (2,)}  # bias: no weight decay


def _cfg(**changes):
    return dataclasses.replace(OptimizerConfig(), weight_decay=WD, clipnorm=CLIP, warmup_steps=0,
                               schedule="constant", **changes)


def _steps():
    """Three steps of gradients; the embedding's are rows (repeated, as a lookup gives)."""
    rng = np.random.default_rng(0)
    rows = [np.array([1, 4, 1, 1]), np.array([0, 4]), np.array([2, 2, 3])]
    return [{"embeddings": (r, rng.normal(size=(len(r), 3)).astype(np.float32)),
             "kernel": rng.normal(size=(3, 2)).astype(np.float32) * s,
             "bias": rng.normal(size=(2,)).astype(np.float32)}
            for r, s in zip(rows, (0.1, 3.0, 0.5))]  # the middle step is clipped


def _initial():
    rng = np.random.default_rng(1)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _numpy_adamw(steps, lazy, cfg):
    w, m, v = _initial(), {k: np.zeros(s) for k, s in SHAPES.items()}, {
        k: np.zeros(s) for k, s in SHAPES.items()}
    for t, grads in enumerate(steps, start=1):
        dense = {k: g for k, g in grads.items() if k != "embeddings"}
        rows, values = grads["embeddings"]
        dense["embeddings"] = np.zeros(SHAPES["embeddings"])
        np.add.at(dense["embeddings"], rows, values)
        norm = np.sqrt(sum(np.sum(g ** 2) for g in dense.values()))
        scale = min(1.0, CLIP / norm)
        alpha = LR * np.sqrt(1 - cfg.beta_2 ** t) / (1 - cfg.beta_1 ** t)
        for k, g in dense.items():
            g = g * scale
            touched = np.unique(rows) if (lazy and k == "embeddings") else slice(None)
            if k != "bias":
                w[k][touched] -= w[k][touched] * WD * LR
            m[k][touched] += (g[touched] - m[k][touched]) * (1 - cfg.beta_1)
            v[k][touched] += (g[touched] ** 2 - v[k][touched]) * (1 - cfg.beta_2)
            w[k][touched] -= alpha * m[k][touched] / (np.sqrt(v[k][touched]) + cfg.epsilon)
    return w


def _run(optimizer, steps, strategy=None, dense=False):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        variables = [keras.Variable(value, name=k) for k, value in _initial().items()]
        optimizer = optimizer()
        optimizer.build(variables)

    @tf.function
    def apply(grads):
        def replica_fn(grads):
            optimizer.apply(grads, variables)
        strategy.run(replica_fn, args=(grads,))

    for grads in steps:
        rows, values = grads["embeddings"]
        embedding = tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant([6, 3]))
        apply([tf.convert_to_tensor(embedding) if dense else embedding,
               tf.constant(grads["kernel"]), tf.constant(grads["bias"])])
    return {k: v.numpy() for k, v in zip(SHAPES, variables)}


@pytest.mark.parametrize("lazy,dense", [(False, False), (True, False), (False, True)])
def test_update_matches_numpy_adamw(lazy, dense):
    """Embedding gradients as repeated rows, or dense (as on TPUs, or after chunking)."""
    cfg = _cfg(lazy_embeddings=lazy)
    got = _run(lambda: build_optimizer(cfg, learning_rate=LR, total_steps=3, precision="fp32"),
               _steps(), dense=dense)
    want = _numpy_adamw(_steps(), lazy, cfg)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    if lazy:  # row 5 never appears in a batch: untouched, not even decayed
        np.testing.assert_array_equal(got["embeddings"][5], _initial()["embeddings"][5])


def test_exact_mode_equals_keras_adamw():
    cfg = _cfg()
    ours = _run(lambda: build_optimizer(cfg, learning_rate=LR, total_steps=3, precision="fp32"),
                _steps())

    def stock():
        opt = keras.optimizers.AdamW(learning_rate=LR, weight_decay=WD, beta_1=cfg.beta_1,
                                     beta_2=cfg.beta_2, epsilon=cfg.epsilon,
                                     global_clipnorm=CLIP)
        opt.exclude_from_weight_decay(var_names=["bias"])
        return opt

    # Stock Keras gets the embedding gradient dense: it would take the norm of the repeated
    # rows before summing them, and clip by the wrong norm.
    keras_result = _run(stock, _steps(), dense=True)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], keras_result[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("lazy", [False, True])
def test_mirrored_update_matches_one_device(lazy):
    cfg = _cfg(lazy_embeddings=lazy)
    make = lambda: build_optimizer(cfg, learning_rate=LR, total_steps=3, precision="fp32")
    mirrored = _run(make, _steps(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    single = _run(make, _steps())
    for k in SHAPES:
        np.testing.assert_allclose(mirrored[k], single[k], rtol=1e-6, err_msg=k)


def _numpy_schedule(step, peak, warmup, end, kind):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(max((step - warmup) / max(end - warmup, 1), 0.0), 1.0)
    return peak * {"linear": 1 - progress, "cosine": 0.5 * (1 + np.cos(np.pi * progress)),
                   "constant": 1.0}[kind]


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedule_matches_numpy(kind):
    schedule = WarmupDecay(2e-3, 10, 110, kind)
    for step in (0, 5, 9, 10, 40, 109, 110, 500):
        expected = _numpy_schedule(step, 2e-3, 10, 110, kind)
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_retarget_moves_the_end_of_the_decay(precision):
    # A run paced by the clock: built for 10,000 steps, it learns it will end at step 60.
    optimizer = build_optimizer(dataclasses.replace(OptimizerConfig(), warmup_steps=10),
                                learning_rate=1e-3, total_steps=10_000, precision=precision)
    retarget_decay(optimizer, 60)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    for step in (10, 35, 60, 80):
        inner.iterations.assign(step)
        expected = _numpy_schedule(step, 1e-3, 10, 60, "linear")
        np.testing.assert_allclose(float(inner.learning_rate), expected, rtol=1e-5, atol=1e-8)
