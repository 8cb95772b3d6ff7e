"""Every path a URL: a whole workflow on TensorFlow's in-memory `ram://` filesystem.

`ram://` goes through the same `tf.io.gfile` layer as `gs://` and lives in this process
only, so the workflow runs in-process; nothing may land under the working directory.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from labse_tf import checkpoints, config as config_lib, data, evaluate, files, prune_vocab, train

ROOT = "ram://object_store"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, vocab_file):
    cwd = tmp_path_factory.mktemp("cwd")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        # The sample corpus split into one gzipped file per language, and the vocabulary.
        pairs, _ = data.read_pairs([data.sample_corpus_path("train")], log=lambda m: None)
        for lang, src, tgt in zip(pairs.langs, pairs.src, pairs.tgt):
            with files.open_file(f"{ROOT}/data/{lang}.tsv.gz", "w") as f:
                f.writelines(f"{s}\t{t}\n" for s, t in zip(src, tgt))
        files.copy(vocab_file, f"{ROOT}/vocab.txt")
        heldout, _ = data.read_pairs([data.sample_corpus_path("heldout")], log=lambda m: None)
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        logs = []
        sets = [f"data.vocab_file={ROOT}/vocab.txt", "train.checkpoint_every=10",
                "train.eval_every=0", "train.steps_per_loop=10"]
        run = f"{ROOT}/run"
        first = train.train(config_lib.load_config("tiny", sets + ["train.steps=10"]),
                            strategy=strategy, model_dir=run,
                            train_patterns=[f"{ROOT}/data/*.tsv.gz"], log=logs.append)
        second = train.train(config_lib.load_config("tiny", sets + ["train.steps=20"]),
                             strategy=strategy, model_dir=run,
                             train_patterns=[f"{ROOT}/data/*.tsv.gz"],
                             eval_sets={"heldout": heldout}, log=logs.append)
        exported = train.export_run(run, "", {"heldout": heldout}, logs.append)
        pruned = prune_vocab.prune(run, [f"{ROOT}/data/deu.tsv.gz"], f"{ROOT}/pruned",
                                   log=logs.append)
        tuned = train.train(config_lib.load_config("tiny", sets + ["train.steps=10"]),
                            strategy=strategy, model_dir=f"{ROOT}/tuned",
                            train_patterns=[f"{ROOT}/data/deu.tsv.gz"],
                            init_checkpoint=f"{ROOT}/pruned", log=logs.append)
        yield {"cwd": cwd, "first": first, "second": second, "export": exported,
               "pruned": pruned, "tuned": tuned, "logs": logs, "run": run}
    finally:
        os.chdir(old)


def test_nothing_is_written_under_the_working_directory(workflow):
    assert os.listdir(workflow["cwd"]) == []


def test_the_run_directory_is_at_its_url(workflow):
    run = workflow["run"]
    for name in ("config.yaml", "manifest.json", "vocab.txt", "summary.json"):
        assert files.exists(f"{run}/{name}"), name
    assert tf.train.latest_checkpoint(f"{run}/checkpoints") == f"{run}/checkpoints/ckpt-20"
    assert workflow["second"]["model_dir"] == run  # stored with its scheme
    cfg = config_lib.load_config(f"{run}/config.yaml")
    assert cfg.data.vocab_file == f"{run}/vocab.txt"
    manifest = files.read_json(f"{run}/manifest.json")
    assert manifest["pairs"] == 490 and len(manifest["languages"]) == 7
    assert all(f["path"].startswith(f"{ROOT}/data/") for f in manifest["files"])


def test_a_second_run_resumes_from_the_url_and_reuses_the_manifest(workflow):
    logs = workflow["logs"]
    assert f"resumed from {workflow['run']}/checkpoints/ckpt-10 at step 10" in logs
    assert f"corpus manifest: {workflow['run']}/manifest.json (reused)" in logs
    assert workflow["first"]["step"] == 10 and workflow["second"]["step"] == 20


def test_the_export_is_at_its_url_and_scores(workflow):
    paths = workflow["export"]["paths"]
    assert paths["serving"] == f"{workflow['run']}/export/serving/1"
    embed = evaluate.embed_fn_from_export(paths["serving"])
    vectors = embed(["Hund", "dog"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert 0.0 <= workflow["export"]["heldout_accuracy"] <= 1.0


def test_pruning_and_fine_tuning_read_and_write_urls(workflow):
    pruned = f"{ROOT}/pruned"
    assert files.exists(f"{pruned}/prune_vocab.json") and files.exists(f"{pruned}/vocab.txt")
    report = json.loads(files.read_text(f"{pruned}/prune_vocab.json"))
    assert report["vocab_after"] < report["vocab_before"] and report["output"].startswith(pruned)
    cfg, _, _, _ = checkpoints.load_run(f"{ROOT}/tuned")
    assert cfg.model.vocab_size == report["vocab_after"]
    assert f"initialised the encoder from {pruned}/checkpoints/ckpt-0" in workflow["logs"]


def test_a_resumed_run_refuses_changed_training_files(workflow):
    with files.open_file(f"{ROOT}/data/extra.tsv", "w") as f:
        f.write("a\tb\n")
    cfg = config_lib.load_config("tiny", [f"data.vocab_file={ROOT}/vocab.txt", "train.steps=30"])
    with pytest.raises(data.DataError, match="not those this run started with"):
        train.train(cfg, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"),
                    model_dir=workflow["run"], train_patterns=[f"{ROOT}/data/*.tsv*"],
                    log=lambda m: None)
