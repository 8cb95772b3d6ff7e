"""bench.learning_curves: a run's in-training evaluations read back as a curve and plotted."""

import pytest
import tensorflow as tf

from bench import learning_curves
from labse_tf import config as config_lib, data, train


def test_curve_points_are_the_runs_evaluations(tmp_path, vocab_file):
    heldout, _ = data.read_pairs([data.sample_corpus_path("heldout")])
    one_language = data.Pairs(heldout.langs[:1], heldout.src[:1], heldout.tgt[:1])
    cfg = config_lib.load_config("tiny", ["train.steps=20", "train.eval_every=10",
                                          f"data.vocab_file={vocab_file}"])
    summary = train.train(cfg, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"),
                          model_dir=str(tmp_path / "run"),
                          train_patterns=[data.sample_corpus_path("train")],
                          eval_sets={"heldout": heldout, "tatoeba": one_language},
                          log=lambda m: None)
    # The two sets score differently, so a swapped tag → name mapping would show.
    assert any(e["heldout_accuracy"] != e["tatoeba_accuracy"] for e in summary["evaluations"])
    curve = learning_curves.read_curve(str(tmp_path / "run"))
    assert curve["config"]["train"]["eval_every"] == 10
    assert [p["step"] for p in curve["points"]] == [10, 20]
    for point, evaluation in zip(curve["points"], summary["evaluations"]):
        assert point["pairs"] == point["step"] * cfg.train.global_batch_size
        assert point["ntrex_dev"] == round(evaluation["heldout_accuracy"], 4)
        assert point["tatoeba_dev"] == round(evaluation["tatoeba_accuracy"], 4)
    assert 0 <= curve["points"][0]["minutes"] <= curve["points"][1]["minutes"]

    png = tmp_path / "curves.png"
    learning_curves.plot([{"name": "tiny", **curve}], str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_without_evaluations_is_refused(tiny_run):
    with pytest.raises(SystemExit, match="no evaluations"):
        learning_curves.read_curve(tiny_run)


def test_a_directory_that_is_no_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no config.yaml"):
        learning_curves.read_curve(str(tmp_path))
