"""A run's checkpoints, and loading a trained encoder back from its run directory.

The directory's layout (every file name in it) is rundir.py's.
"""

import tempfile

import keras
import tensorflow as tf

from labse_tf import config as config_lib, files
from labse_tf.model import build_encoder
from labse_tf.preprocessing import Preprocessor
from labse_tf.rundir import (BEST_DIR, CHECKPOINT_DIR, CONFIG_FILE, SCORE_FILE, SUMMARY_FILE,
                             vocab_path)

__all__ = ["Saver", "find_checkpoint", "load_run", "write_run", "write_summary"]


def write_summary(summary: dict, model_dir: str) -> str:
    """Writes what a command made and measured as MODEL_DIR/summary.json; returns the path."""
    return files.write_json(files.join(model_dir, SUMMARY_FILE), summary)


class Saver:
    """A run's checkpoints: the latest few, and the one with the best evaluation score.

    Saves are collective under multi-worker training: the other workers save too, into
    a scratch directory of their own that `close` (or leaving the `with` block) removes
    however the run ends. Only the chief writes MODEL_DIR.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, keep: int,
                 is_chief: bool = True):
        self.is_chief = is_chief
        self.write_dir = model_dir if is_chief else tempfile.mkdtemp(prefix="labse_tf_worker_")
        self.latest = tf.train.CheckpointManager(
            checkpoint, files.join(self.write_dir, CHECKPOINT_DIR), max_to_keep=keep,
            step_counter=checkpoint.step)
        self.best = tf.train.CheckpointManager(
            checkpoint, files.join(self.write_dir, BEST_DIR), max_to_keep=1,
            step_counter=checkpoint.step)
        self.best_score = _best_score(model_dir)

    def __enter__(self) -> "Saver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self.is_chief:
            files.rmtree(self.write_dir)

    def save(self, step: int) -> str:
        return self.latest.save(checkpoint_number=step)

    def offer(self, step: int, key: str, score: float | None) -> bool:
        """Keeps this step's weights as the best if `score` (higher is better) beats the
        best so far, in this run or the earlier parts of it; returns whether it did."""
        if score is None or (self.best_score is not None and score <= self.best_score):
            return False
        self.best_score = score
        self.best.save(checkpoint_number=step)
        files.write_json(files.join(self.write_dir, BEST_DIR, SCORE_FILE), {"step": step, key: score})
        return True


def _best_score(model_dir: str):
    """The best evaluation score saved by an earlier (resumed) part of this run."""
    path = files.join(model_dir, BEST_DIR, SCORE_FILE)
    if not files.exists(path):
        return None
    return next(v for k, v in files.read_json(path).items() if k != "step")


def find_checkpoint(model_dir: str, checkpoint: str = "") -> str:
    """The given checkpoint prefix, or the latest one in MODEL_DIR/checkpoints."""
    if checkpoint:
        if not tf.io.gfile.glob(checkpoint + ".index"):
            raise FileNotFoundError(f"{checkpoint}: no such checkpoint (no {checkpoint}.index)")
        return checkpoint
    latest = tf.train.latest_checkpoint(files.join(model_dir, CHECKPOINT_DIR))
    if not latest:
        raise FileNotFoundError(f"{model_dir}: no checkpoint in {CHECKPOINT_DIR}/ "
                                "(is this a labse_tf training run directory?)")
    return latest


def load_run(model_dir: str, checkpoint: str = "", seq_length: int | None = None
             ) -> tuple[config_lib.Config, Preprocessor, keras.Model, str]:
    """Rebuilds a run's preprocessor and encoder from its config, vocabulary and checkpoint.

    Returns:
      (config, preprocessor, encoder in fp32, checkpoint path).
    """
    config_file = files.join(model_dir, CONFIG_FILE)
    if not files.exists(config_file):
        raise FileNotFoundError(f"{model_dir}: no {CONFIG_FILE} (not a labse_tf run directory)")
    cfg = config_lib.load_config(config_file)
    path = find_checkpoint(model_dir, checkpoint)
    preprocessor = Preprocessor(vocab_path(model_dir), lowercase=cfg.data.lowercase,
                                seq_length=seq_length or cfg.data.seq_length)
    encoder = build_encoder(cfg.model, preprocessor.vocab_size)
    tf.train.Checkpoint(encoder=encoder).read(path).expect_partial().assert_existing_objects_matched()
    return cfg, preprocessor, encoder, path


def write_run(cfg: config_lib.Config, vocab_tokens, encoder: keras.Model, model_dir: str) -> str:
    """Writes a model directory that `load_run` (and train/export/evaluate) accept.

    For encoders made outside a training run (converted or pruned): `config.yaml` with
    `model.vocab_size` and `data.vocab_file` set to the vocabulary written, `vocab.txt`, and
    the encoder as `checkpoints/ckpt-0` (step 0: nothing trained here).

    Args:
      cfg: Config. Its model section must describe `encoder`.
      vocab_tokens: sequence of str. The vocabulary, one token per embedding row.
      encoder: keras.Model. From model.build_encoder.
      model_dir: str. Created if needed; must not hold a config or checkpoints already.

    Returns:
      The checkpoint path written.
    """
    for name in (CONFIG_FILE, CHECKPOINT_DIR):
        if files.exists(files.join(model_dir, name)):
            raise FileExistsError(f"{model_dir}: already holds {name}; choose a new directory")
    files.write_text(vocab_path(model_dir), "".join(token + "\n" for token in vocab_tokens))
    cfg = config_lib.override(cfg, [f"model.vocab_size={len(vocab_tokens)}",
                                    f"data.vocab_file={files.absolute(vocab_path(model_dir))}"])
    config_lib.write_config(cfg, model_dir)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(encoder=encoder),
                                         files.join(model_dir, CHECKPOINT_DIR), max_to_keep=1)
    return manager.save(checkpoint_number=0)
