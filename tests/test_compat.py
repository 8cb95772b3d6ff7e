"""Each Keras/TF internal that labse_tf.compat wraps, exercised on a real small object, so
that an upgrade which renames or removes one fails here."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from labse_tf import compat


def test_importing_under_another_keras_fails(monkeypatch):
    """The check runs at import: a Keras upgrade stops labse_tf there, not mid-training."""
    monkeypatch.setattr(keras, "__version__", "3.16.0")
    with pytest.raises(ImportError, match=r"keras 3\.16\.0 \(expected 3\.15\.x\)"):
        importlib.reload(compat)
    monkeypatch.setattr(keras.optimizers.AdamW, "_clip_gradients", None)
    monkeypatch.setattr(compat, "check_versions", lambda installed: None)
    with pytest.raises(ImportError, match=r"AdamW has no \['_clip_gradients'\]"):
        compat._check_optimizer_overrides()
    monkeypatch.undo()
    importlib.reload(compat)


def test_the_optimizer_overrides_are_the_checked_ones():
    from labse_tf import optimization
    private = {name for name in vars(optimization._AdamW)
               if name.startswith("_") and not name.startswith("__")}
    assert private - {"_lazy_update"} == set(compat.OPTIMIZER_OVERRIDES)


def test_other_versions_fail_naming_installed_and_expected():
    with pytest.raises(ImportError, match=r"keras 3\.16\.0 \(expected 3\.15\.x\)"):
        compat.check_versions({"keras": "3.16.0", "tensorflow": "2.20.3",
                               "tensorflow_text": "2.20.0"})


def _model():
    inputs = keras.Input((3,))
    inner = keras.Sequential([keras.layers.Dense(4, name="inner_dense"),
                              keras.layers.Dropout(0.5, seed=1, name="inner_dropout")],
                             name="block")
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(inner(inputs)))


def test_sublayers_finds_nested_layers():
    names = [layer.name for layer in compat.sublayers(_model())]
    assert {"block", "inner_dense", "inner_dropout", "head"} <= set(names)


def test_seed_generators_finds_the_nested_dropout():
    (generator,) = compat.seed_generators(_model())
    assert isinstance(generator, keras.random.SeedGenerator)
    assert tuple(generator.state.shape) == (2,)


def test_replace_call_changes_one_instance():
    patched, plain = keras.layers.Dense(2), keras.layers.Dense(2)
    x = tf.ones([1, 3])
    patched(x), plain(x)
    compat.replace_call(patched, lambda inputs, training=None: tf.zeros([1, 7]))
    assert patched(x).shape == (1, 7)
    assert plain(x).shape == (1, 2)


def test_learning_rate_schedule_is_the_object_given():
    schedule = keras.optimizers.schedules.PolynomialDecay(1e-3, 10)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    assert compat.learning_rate_schedule(optimizer) is schedule


def _adamw_step(**kwargs):
    variable = keras.Variable(np.ones([2, 3], np.float32))
    optimizer = keras.optimizers.AdamW(learning_rate=0.1, beta_1=0.9, **kwargs)
    optimizer.build([variable])
    optimizer.apply([tf.fill([2, 3], 2.0)], [variable])
    return optimizer, variable


def test_variable_key_is_per_variable():
    optimizer, variable = _adamw_step()
    other = keras.Variable(np.ones([2], np.float32))
    # A Keras variable and the tf.Variable behind it (what a gradient update sees) agree.
    assert compat.variable_key(optimizer, variable) == compat.variable_key(optimizer,
                                                                           variable.value)
    assert compat.variable_key(optimizer, variable) != compat.variable_key(optimizer, other)


def test_adam_slots_are_the_moments():
    optimizer, variable = _adamw_step()
    m, v = compat.adam_slots(optimizer, variable)
    np.testing.assert_allclose(m.numpy(), np.full([2, 3], 0.1 * 2.0), rtol=1e-6)  # (1 - b1) g
    np.testing.assert_allclose(v.numpy(), np.full([2, 3], 0.001 * 4.0), rtol=1e-6)  # (1 - b2) g²


def test_built_variables_are_those_given_to_build():
    optimizer, variable = _adamw_step()
    assert [id(v) for v in compat.built_variables(optimizer)] == [id(variable)]


def test_decays_follows_exclude_from_weight_decay():
    kept, excluded = keras.Variable(np.ones([2]), name="kernel"), keras.Variable(
        np.ones([2]), name="bias")
    optimizer = keras.optimizers.AdamW(weight_decay=0.01)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build([kept, excluded])
    assert compat.decays(optimizer, kept) and not compat.decays(optimizer, excluded)


@pytest.mark.parametrize("name", compat.OPTIMIZER_OVERRIDES)
def test_keras_apply_calls_each_overridden_method(name):
    calls = []

    class Recording(keras.optimizers.AdamW):
        pass

    def record(self, *args, **kwargs):
        calls.append(name)
        return getattr(keras.optimizers.AdamW, name)(self, *args, **kwargs)

    setattr(Recording, name, record)
    variable = keras.Variable(np.ones([2, 3], np.float32))
    optimizer = Recording(learning_rate=0.1, weight_decay=0.01, global_clipnorm=1.0)
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        strategy.extended.call_for_each_replica(
            lambda: optimizer.apply([tf.fill([2, 3], 2.0)], [variable]))
    assert calls, f"keras {keras.__version__}: AdamW.apply no longer calls {name}"


def test_basic_tokenizer_splits_punctuation_and_cjk():
    words = compat.BasicTokenizer(lower_case=False).tokenize(tf.constant(["Hello, 世界!"]))
    assert words.to_list() == [[b"Hello", b",", b"\xe4\xb8\x96", b"\xe7\x95\x8c", b"!"]]
