"""The layout of a run directory: every name in it, defined here and nowhere else.

    MODEL_DIR/config.yaml       resolved config, written before step 0
    MODEL_DIR/manifest.json     the corpus manifest: files, pairs per file and language
                                (corpus.py reads and writes it; a prepared corpus has one too)
    MODEL_DIR/vocab.txt         the vocabulary the run tokenized with
    MODEL_DIR/checkpoints/      tf.train.CheckpointManager checkpoints (ckpt-<step>)
    MODEL_DIR/best/             the checkpoint with the best evaluation score, if evaluated,
    MODEL_DIR/best/score.json     and its step and score
    MODEL_DIR/clock.json        with a time budget: loop seconds spent and the decay end
    MODEL_DIR/summaries/        TensorBoard event files
    MODEL_DIR/summary.json      what the run made and measured, written at the end
    MODEL_DIR/stages/<k>/       pretrain only: stage k < 3 of progressive stacking, with its
                                own checkpoints/ and summaries/ (the last stage is MODEL_DIR)
    MODEL_DIR/export/           train's default export (its layout: export.py)
    MODEL_DIR/prune_vocab.json  prune_vocab only: its report, in the model directory it wrote

A converted or pruned model directory (checkpoints.write_run) holds config.yaml, vocab.txt
and checkpoints/ckpt-0. MODEL_DIR may be any URL `tf.io.gfile` reaches (gs://...); under
multi-worker training only the chief writes it.
"""

from labse_tf import files

__all__ = ["BEST_DIR", "CHECKPOINT_DIR", "CLOCK_FILE", "CONFIG_FILE", "EXPORT_DIR",
           "MANIFEST_FILE", "PRUNE_REPORT_FILE", "SCORE_FILE", "STAGES_DIR", "SUMMARIES_DIR",
           "SUMMARY_FILE", "VOCAB_FILE", "stage_dir", "vocab_path"]

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.txt"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
SCORE_FILE = "score.json"  # in BEST_DIR
CLOCK_FILE = "clock.json"
SUMMARIES_DIR = "summaries"
SUMMARY_FILE = "summary.json"
STAGES_DIR = "stages"
EXPORT_DIR = "export"
PRUNE_REPORT_FILE = "prune_vocab.json"


def vocab_path(model_dir: str) -> str:
    return files.join(model_dir, VOCAB_FILE)


def stage_dir(model_dir: str, number: int) -> str:
    """The run directory of pre-training stage `number` (1 or 2; stage 3 is MODEL_DIR)."""
    return files.join(model_dir, STAGES_DIR, str(number))
