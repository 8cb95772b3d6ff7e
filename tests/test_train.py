"""The training command end to end: outputs, resume after SIGKILL, NaN stop, bad data."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from labse_tf import data, evaluate

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
# bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.4%); over 50 steps the
# rounding of activations and gradients moved the logged loss by at most 0.6% (Intel
# Xeon model 167, AMX), while it fell from 19.0 to 6.1.
BF16_CURVE_RTOL = 0.02


def _train(model_dir, *args, vocab_file, export=False, timeout=600):
    cmd = [sys.executable, "-m", "labse_tf.train", f"--model_dir={model_dir}",
           f"--set=data.vocab_file={vocab_file}", *args] + ([] if export else ["--noexport"])
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.mark.slow
def test_run_writes_config_checkpoints_summary_and_progress(tmp_path, vocab_file):
    model_dir = tmp_path / "run"
    proc = _train(model_dir, "--set=train.steps=20", "--set=train.steps_per_loop=10",
                  "--set=train.eval_every=10", vocab_file=vocab_file, export=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "step 10/20" in out and "step 20/20" in out and "pairs/s" in out and "ETA" in out
    assert f"run directory: {model_dir}" in out
    assert "retrieval at step 20: heldout_accuracy" in out
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["step"] == 20 and summary["data"]["malformed_lines"] == 0
    assert [e["step"] for e in summary["evaluations"]] == [10, 20]
    assert 0.0 <= summary["evaluations"][-1]["heldout_accuracy"] <= 1.0
    assert (model_dir / "config.yaml").exists() and (model_dir / "vocab.txt").exists()
    assert (model_dir / "checkpoints" / "ckpt-20.index").exists()
    assert (model_dir / "best" / "score.json").exists()
    assert list((model_dir / "summaries").iterdir())  # TensorBoard events
    # The run ends with an export that loads and embeds the sample corpus.
    serving = model_dir / "export" / "serving" / "1"
    assert f"exported serving:      {serving}" in out
    assert "exported model, heldout retrieval accuracy" in out
    assert summary["export"]["heldout_accuracy"] == pytest.approx(
        summary["evaluations"][-1]["heldout_accuracy"], abs=0.02)  # export == checkpoint
    _, src, _ = data.read_pairs([data.sample_corpus_path("train")])[0].flat()
    embeddings = evaluate.embed_fn_from_export(str(model_dir / "export"))(src)
    assert embeddings.shape == (490, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def _losses(stdout):
    return [float(m) for m in re.findall(r"^step \d+/\d+  loss ([0-9.]+)", stdout, re.M)]


@pytest.mark.slow
def test_gradient_caching_logs_the_same_loss_curve(tmp_path, vocab_file):
    args = ["--set=train.steps=20", "--set=train.global_batch_size=32", "--set=model.dropout=0",
            "--set=train.steps_per_loop=5", "--set=train.eval_every=0"]
    plain = _train(tmp_path / "a", *args, "--set=train.chunk_size=0", vocab_file=vocab_file)
    chunked = _train(tmp_path / "b", *args, "--set=train.chunk_size=4", vocab_file=vocab_file)
    assert plain.returncode == 0 and chunked.returncode == 0, plain.stderr + chunked.stderr
    curve, chunked_curve = _losses(plain.stdout), _losses(chunked.stdout)
    assert len(curve) == 4 and curve[0] != curve[-1]
    np.testing.assert_allclose(chunked_curve, curve, rtol=1e-3)


@pytest.mark.slow
def test_bf16_follows_the_fp32_loss_curve(tmp_path, vocab_file):
    """50 tiny-config steps from the same initial weights and batches: bf16 compute (fp32
    variables and loss) logs the fp32 curve within BF16_CURVE_RTOL a point, while the
    loss itself falls by far more than that."""
    args = ["--set=train.steps=50", "--set=train.global_batch_size=32", "--set=model.dropout=0",
            "--set=train.steps_per_loop=5", "--set=train.eval_every=0"]
    fp32 = _train(tmp_path / "a", *args, "--set=train.precision=fp32", vocab_file=vocab_file)
    bf16 = _train(tmp_path / "b", *args, "--set=train.precision=bf16", vocab_file=vocab_file)
    assert fp32.returncode == 0 and bf16.returncode == 0, fp32.stderr + bf16.stderr
    curve, bf16_curve = np.array(_losses(fp32.stdout)), np.array(_losses(bf16.stdout))
    assert len(curve) == len(bf16_curve) == 10
    assert curve[-1] < 0.8 * curve[0]
    np.testing.assert_allclose(bf16_curve, curve, rtol=BF16_CURVE_RTOL)


@pytest.mark.slow
def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path, vocab_file):
    model_dir = tmp_path / "run"
    args = ["--set=train.checkpoint_every=10", "--set=train.steps_per_loop=5",
            "--set=train.eval_every=0", f"--set=data.vocab_file={vocab_file}", "--noexport"]
    proc = subprocess.Popen([sys.executable, "-m", "labse_tf.train", f"--model_dir={model_dir}",
                             "--set=train.steps=100000", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    ckpt_dir = model_dir / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt_dir / "ckpt-20.index").exists():
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = max(int(p.name[5:-6]) for p in ckpt_dir.glob("ckpt-*.index"))
    # The kill can land after a checkpoint's files but before the manager records it:
    # the run then resumes from the one before, still within one interval.
    with open(ckpt_dir / "checkpoint", encoding="utf-8") as f:
        saved = int(re.search(r'model_checkpoint_path: "ckpt-(\d+)"', f.read()).group(1))
    assert written >= 20 and written - 10 <= saved <= written
    resumed = _train(model_dir, f"--set=train.steps={saved + 10}", *args[:3], vocab_file=vocab_file)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {ckpt_dir}/ckpt-{saved} at step {saved}" in resumed.stdout
    assert f"step {saved + 5}/{saved + 10}" in resumed.stdout  # continues, does not restart
    assert (ckpt_dir / f"ckpt-{saved + 10}.index").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, vocab_file):
    model_dir = tmp_path / "run"
    common = ["--set=train.checkpoint_every=10", "--set=train.eval_every=0"]
    assert _train(model_dir, "--set=train.steps=10", *common, vocab_file=vocab_file).returncode == 0
    # A scale this large overflows the logits to inf and the loss to NaN.
    bad = _train(model_dir, "--set=train.steps=20", "--set=loss.scale=1e39", *common,
                 vocab_file=vocab_file)
    assert bad.returncode == 1
    assert "non-finite metrics" in bad.stderr
    assert "Last good checkpoint:" in bad.stderr and "ckpt-10" in bad.stderr
    ckpts = sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index"))
    assert ckpts == ["ckpt-10.index"]


@pytest.mark.slow
def test_malformed_lines_are_reported_and_counted_in_the_summary(tmp_path, vocab_file):
    good = open(data.sample_corpus_path("train"), encoding="utf-8").read().splitlines()[:40]
    path = tmp_path / "pairs.tsv"
    path.write_bytes("\n".join(good[:20] + ["broken line", "fra\t\tx"] + good[20:]).encode() + b"\n")
    model_dir = tmp_path / "run"
    proc = _train(model_dir, f"--train_data={path}", "--set=train.steps=2",
                  "--set=train.global_batch_size=4", vocab_file=vocab_file)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}:21: skipped malformed line: expected 2 or 3 tab-separated fields, got 1" in proc.stdout
    assert f"{path}:22: skipped malformed line: empty source field" in proc.stdout
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["data"]["malformed_lines"] == 2 and summary["data"]["pairs"] == 40


@pytest.mark.slow
def test_missing_data_and_bad_config_fail_before_training(tmp_path, vocab_file):
    proc = _train(tmp_path / "a", f"--train_data={tmp_path}/none*.tsv", vocab_file=vocab_file)
    assert proc.returncode == 1 and "matches no file" in proc.stderr
    proc = _train(tmp_path / "b", "--set=train.global_batch_size=33", "--strategy=mirrored",
                  "--cpu_replicas=2", vocab_file=vocab_file)
    assert proc.returncode == 1 and "not divisible by the 2 replicas" in proc.stderr
    proc = _train(tmp_path / "c", "--set=model.vocab_size=12", vocab_file=vocab_file)
    assert proc.returncode == 1 and "model.vocab_size: 12 but" in proc.stderr
    proc = _train(tmp_path / "d", "--set=data.language_group=32", "--strategy=mirrored",
                  "--cpu_replicas=2", vocab_file=vocab_file)
    assert proc.returncode == 1 and ("data.language_group: 32 does not divide the batch of each "
                                     "of the 2 replicas (16 pairs)") in proc.stderr
    proc = _train(tmp_path / "e", "--set=train.time_budget_minutes=1", "--strategy=multi_worker",
                  vocab_file=vocab_file)
    assert proc.returncode == 1 and "train.time_budget_minutes: each worker" in proc.stderr
    assert not (tmp_path / "a" / "checkpoints").exists()


@pytest.mark.slow
def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "labse_tf.train", "--help"], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 1, proc.stderr  # absl ends --help with exit status 1
    assert proc.stdout.startswith("Trains a LaBSE dual encoder")  # the module doc as usage
    # Each flag on its own definition line (`  --name: help`), not a mention in another's help.
    defined = re.findall(r"^  --(?:\[no\])?(\w+): \S", proc.stdout, re.M)
    assert {"config", "set", "strategy", "cpu_replicas", "tpu", "model_dir", "train_data",
            "eval_data", "eval_tatoeba_dir", "init_checkpoint", "export", "export_dir"} <= set(
        defined), defined


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_resumed_run_reads_the_batches_of_an_uninterrupted_one(replicas, sample_manifest,
                                                                   vocab_file):
    """The distributed iterator built at step 6 yields what the one from step 0 did at 6.."""
    import tensorflow as tf

    from labse_tf import config as config_lib, train
    from labse_tf.preprocessing import Preprocessor

    strategy = (tf.distribute.OneDeviceStrategy("/cpu:0") if replicas == 1 else
                tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    cfg = config_lib.load_config("tiny", ["train.global_batch_size=8"])
    pre = Preprocessor(vocab_file, seq_length=16)

    def steps(start, count):
        iterator = train.distributed_pairs(strategy, sample_manifest, pre, cfg, start)
        return [[r.numpy() for r in strategy.experimental_local_results(next(iterator)["src"]
                                                                        ["token_ids"])]
                for _ in range(count)]

    full, resumed = steps(0, 9), steps(6, 3)
    assert len(full[0]) == replicas
    for a, b in zip(full[6:], resumed):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(full[0][0], full[0][-1]) or replicas == 1  # replicas differ
