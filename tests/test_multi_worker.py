"""A real 2-process MultiWorkerMirroredStrategy on 127.0.0.1 matches one replica."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from labse_tf import config as config_lib
from labse_tf.gradients import compute_gradients
from labse_tf.model import build_encoder
from labse_tf.preprocessing import Preprocessor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(cmd, n, cwd, extra_env=None):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    procs = []
    for i in range(n):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": i}}),
                   **(extra_env or {}))
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    return outputs


@pytest.mark.slow
def test_two_workers_give_the_loss_and_gradients_of_one_replica(tmp_path, vocab_file, sample_pairs):
    pre = Preprocessor(vocab_file, seq_length=16)
    _, src, tgt = sample_pairs.flat()
    batch = {"src": pre(tf.constant(src[:16])), "tgt": pre(tf.constant(tgt[:16]))}
    encoder = build_encoder(config_lib.ModelConfig(dropout=0.0, pooling="mean"), pre.vocab_size)
    tf.train.Checkpoint(encoder=encoder).write(str(tmp_path / "init"))
    np.savez(tmp_path / "batch.npz", vocab_size=pre.vocab_size,
             **{f"{side}_{k}": v.numpy() for side in batch for k, v in batch[side].items()})

    loss_cfg = config_lib.LossConfig(scale=20.0, margin=0.3, gather=True)
    grads, metrics = compute_gradients(lambda x: encoder(x, training=True)["embedding"],
                                       encoder.trainable_variables, batch, loss_cfg)

    _launch([sys.executable, os.path.join(HERE, "multi_worker_grads.py"), str(tmp_path)], 2, ROOT)
    for task in range(2):
        got = np.load(tmp_path / f"worker{task}.npz")
        np.testing.assert_allclose(got["loss"], metrics["loss"].numpy(), rtol=1e-5)
        for i, g in enumerate(grads):
            np.testing.assert_allclose(got[f"g{i}"], tf.convert_to_tensor(g).numpy(),
                                       rtol=1e-4, atol=2e-6)


@pytest.mark.slow
def test_training_command_runs_on_two_workers(tmp_path, vocab_file):
    model_dir = tmp_path / "run"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    outputs = _launch([sys.executable, "-m", "labse_tf.train", "--strategy=multi_worker",
                       f"--model_dir={model_dir}", "--noexport", "--set=train.steps=10",
                       "--set=train.checkpoint_every=5", "--set=train.steps_per_loop=5",
                       "--set=train.eval_every=0", f"--set=data.vocab_file={vocab_file}"],
                      2, str(tmp_path), {"TMPDIR": str(scratch)})
    assert "2 replica(s)" in outputs[0] and "step 10/10" in outputs[0]
    assert "step 10/10" not in outputs[1]  # only the chief reports and writes
    # Only the chief counts the corpus and writes the run directory; the other worker
    # reads its manifest after the barrier, and its scratch checkpoints are removed.
    assert "corpus manifest:" in outputs[0] and "corpus manifest:" not in outputs[1]
    assert (model_dir / "manifest.json").exists()
    assert not list(scratch.glob("labse_tf_worker_*"))
    assert (model_dir / "checkpoints" / "ckpt-10.index").exists()
    assert json.loads((model_dir / "summary.json").read_text())["replicas"] == 2
