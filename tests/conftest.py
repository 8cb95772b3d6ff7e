"""Shared fixtures: a vocabulary and a tiny trained run built once per test session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf

from labse_tf import config as config_lib, data, distribute, train, vocab

# Two logical CPU devices before TF initialises, so multi-replica tests run on a laptop.
distribute.set_cpu_devices(2)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


def copy_to_ram(local_dir, name: str) -> str:
    """A copy of a local directory tree on TF's in-memory filesystem: ram://NAME."""
    for root, _, names in os.walk(local_dir):
        for file_name in names:
            path = os.path.join(root, file_name)
            target = f"ram://{name}/{os.path.relpath(path, local_dir)}"
            tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
            tf.io.gfile.copy(path, target, overwrite=True)
    return f"ram://{name}"


def shared_path(*parts: str) -> str:
    """A path in ../shared, or skip the test when the checkout has no ../shared."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs {os.path.normpath(path)} (the shared data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def sample_pairs():
    pairs, _ = data.read_pairs([data.sample_corpus_path("train")])
    return pairs


@pytest.fixture(scope="session")
def sample_manifest():
    return data.load_manifest([data.sample_corpus_path("train")], log=lambda m: None)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory, sample_pairs):
    """A vocabulary learned from the shipped sample corpus."""
    path = str(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    sentences = [s for group in zip(sample_pairs.src, sample_pairs.tgt) for side in group for s in side]
    return vocab.write_vocab(vocab.build_vocab(sentences, 2000), path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, vocab_file):
    """A run directory of the tiny config trained 40 steps on the sample corpus."""
    model_dir = str(tmp_path_factory.mktemp("tiny_run"))
    cfg = config_lib.load_config("tiny", ["train.steps=40", "train.checkpoint_every=20",
                                          "train.eval_every=0", f"data.vocab_file={vocab_file}"])
    train.train(cfg, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"), model_dir=model_dir,
                train_patterns=[data.sample_corpus_path("train")], log=lambda m: None)
    return model_dir
