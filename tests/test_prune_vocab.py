"""Tests for labse_tf.prune_vocab: a smaller vocabulary that embeds the corpus identically.

The model is the tiny config with random weights (large enough that every embedding row
matters) and the session vocabulary learned from the sample corpus (7 languages, 4 scripts);
it is pruned to the pairs of the Latin-script languages.
"""

import json
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from conftest import copy_to_ram
from labse_tf import checkpoints, config as config_lib, data, files, prune_vocab, rundir
from labse_tf.model import build_encoder, embed
from labse_tf.preprocessing import SPECIAL_TOKENS, read_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEP = ("deu", "fra", "spa")
DROPPED_SCRIPTS = ("CYRILLIC", "GREEK", "CJK")  # of rus/ukr, ell, cmn


@pytest.fixture(scope="module")
def full_model(tmp_path_factory, vocab_file):
    """A model directory: tiny config, [CLS] pooling, random weights, the session vocabulary."""
    model_dir = str(tmp_path_factory.mktemp("full"))
    cfg = config_lib.load_config("tiny", ["model.pooling=cls"])
    tokens = read_vocab(vocab_file)
    encoder = build_encoder(cfg.model, len(tokens))
    rng = np.random.default_rng(0)
    for weight in encoder.weights:
        base = 1.0 if weight.path.endswith("gamma") else 0.0
        weight.assign(base + rng.normal(0, 0.3, weight.shape))
    checkpoints.write_run(cfg, tokens, encoder, model_dir)
    return model_dir


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, full_model):
    """FULL_MODEL pruned to the sample corpus's deu/fra/spa pairs by the command line."""
    output = str(tmp_path_factory.mktemp("pruned") / "model")
    done = subprocess.run(
        [sys.executable, "-m", "labse_tf.prune_vocab", f"--model_dir={full_model}",
         f"--corpus={data.sample_corpus_path('train')}", f"--keep_langs={','.join(KEEP)}",
         f"--output={output}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(output, rundir.PRUNE_REPORT_FILE)) as f:
        return output, done.stdout, json.load(f)


def _unknown_pieces(preprocessor, sentences) -> int:
    return int((preprocessor.tokenize(sentences).flat_values.numpy() == preprocessor.unk_id).sum())


def _kept_ids(full_model: str, output: str) -> np.ndarray:
    full = read_vocab(rundir.vocab_path(full_model))
    return np.array([full.index(t) for t in read_vocab(rundir.vocab_path(output))])


def _embed(model_dir: str, sentences: list) -> np.ndarray:
    _, preprocessor, encoder, _ = checkpoints.load_run(model_dir)
    return embed(encoder, preprocessor(tf.constant(sentences))).numpy()


def _kept_sentences(split: str) -> list:
    sentences, langs = prune_vocab.corpus_sentences([data.sample_corpus_path(split)], KEEP,
                                                    log=lambda m: None)
    assert langs == KEEP
    return sentences


@pytest.mark.slow
def test_pruned_model_embeds_the_kept_languages_identically(full_model, pruned):
    output, stdout, report = pruned
    sentences = _kept_sentences("train")  # both sides of 3 × 70 pairs
    assert len(sentences) == 420
    assert f"tokenization unchanged: 100.00% of {len(sentences)} corpus sentences" in stdout
    assert report["unchanged_tokenization"] == 1.0
    full, small = (_embed(model_dir, sentences) for model_dir in (full_model, output))
    np.testing.assert_allclose(small, full, atol=1e-6)
    # What was cut is the token embedding rows only: hidden_dim parameters per token.
    hidden = checkpoints.load_run(output)[0].model.hidden_dim
    assert report["vocab_after"] < report["vocab_before"] / 2
    assert (report["parameters_before"] - report["parameters_after"]
            == (report["vocab_before"] - report["vocab_after"]) * hidden)
    assert f"vocabulary: {report['vocab_before']:,} → {report['vocab_after']:,} tokens" in stdout


@pytest.mark.slow
def test_pruned_vocabulary_is_an_ordered_subset_without_the_dropped_scripts(vocab_file, pruned):
    output, _, report = pruned
    full, small = read_vocab(vocab_file), read_vocab(rundir.vocab_path(output))
    assert len(small) == report["vocab_after"] and small[:len(SPECIAL_TOKENS)] == list(
        SPECIAL_TOKENS)
    positions = [full.index(token) for token in small]
    assert positions == sorted(positions)  # original order, so [PAD] stays id 0
    scripts = {unicodedata.name(c, "").split(" ")[0] for t in small for c in t}
    assert not scripts & set(DROPPED_SCRIPTS)
    assert {unicodedata.name(c).split(" ")[0] for t in full for c in t} >= set(DROPPED_SCRIPTS)


@pytest.mark.slow
def test_unseen_sentences_of_kept_languages_gain_no_unknown_tokens(full_model, pruned):
    """Held-out sentences (not in the pruning corpus) may split into other pieces, but a word
    in the corpus's characters never becomes [UNK]: each character is kept as c and ##c."""
    output, _, _ = pruned
    _, full, _, _ = checkpoints.load_run(full_model)
    _, small, _, _ = checkpoints.load_run(output)
    heldout = _kept_sentences("heldout")
    seen = prune_vocab.corpus_characters(_kept_sentences("train"), lowercase=True)
    heldout = [s for s in heldout if set(s.lower()) - {" "} <= seen]
    assert len(heldout) > 50
    assert _unknown_pieces(small, heldout) == _unknown_pieces(full, heldout)
    assert prune_vocab.unchanged_fraction(full, small, _kept_ids(full_model, output), heldout) < 1


def test_select_tokens_keeps_used_pieces_reserved_tokens_and_characters():
    tokens = list(SPECIAL_TOKENS) + ["the", "cat", "##s", "dog", "c", "##a", "##t", "a", "x"]
    counts = np.array([0, 0, 0, 0, 0, 5, 2, 1, 0, 0, 0, 0, 0, 0])
    kept = prune_vocab.select_tokens(tokens, counts, {"c", "a", "t"}, min_count=1)
    assert [tokens[i] for i in kept] == list(SPECIAL_TOKENS) + [
        "the", "cat", "##s", "c", "##a", "##t", "a"]
    kept = prune_vocab.select_tokens(tokens, counts, {"c", "a", "t"}, min_count=2)
    assert [tokens[i] for i in kept] == list(SPECIAL_TOKENS) + [
        "the", "cat", "c", "##a", "##t", "a"]


def test_high_min_count_keeps_character_coverage(full_model, tmp_path):
    output = str(tmp_path / "chars")
    report = prune_vocab.prune(full_model, [data.sample_corpus_path("train")], output,
                               keep_langs=["deu"], min_count=10_000, log=lambda m: None)
    # Only reserved tokens and characters are left: words split into more pieces, but the
    # corpus gains no [UNK].
    assert report["unchanged_tokenization"] < 0.5
    _, full, _, _ = checkpoints.load_run(full_model)
    _, small, _, _ = checkpoints.load_run(output)
    sentences, _ = prune_vocab.corpus_sentences([data.sample_corpus_path("train")], ["deu"],
                                                log=lambda m: None)
    assert _unknown_pieces(small, sentences) == _unknown_pieces(full, sentences)
    assert all(len(t.removeprefix("##")) == 1 for t in read_vocab(
        rundir.vocab_path(output)) if t not in SPECIAL_TOKENS)


def test_unknown_language_is_an_error_naming_the_corpus_languages(full_model, tmp_path):
    with pytest.raises(data.DataError, match=r"\['pol'\] not in the corpus .*deu, ell, fra"):
        prune_vocab.prune(full_model, [data.sample_corpus_path("train")], str(tmp_path / "x"),
                          keep_langs=["deu", "pol"], log=lambda m: None)


def test_prune_on_another_filesystem(full_model, tmp_path, monkeypatch):
    """Model, corpus and output on ram:// (a stand-in for gs://), in this process."""
    model_dir = copy_to_ram(full_model, f"{tmp_path.name}/full")
    corpus = copy_to_ram(os.path.dirname(data.sample_corpus_path("train")),
                         f"{tmp_path.name}/corpus") + "/train.tsv"
    output = f"ram://{tmp_path.name}/pruned"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    report = prune_vocab.prune(model_dir, [corpus], output, keep_langs=["deu"],
                               log=lambda m: None)
    assert os.listdir(tmp_path / "cwd") == []
    assert files.read_json(f"{output}/{rundir.PRUNE_REPORT_FILE}") == report
    assert (report["model_dir"], report["output"]) == (model_dir, f"{output}/checkpoints/ckpt-0")
    assert report["unchanged_tokenization"] == 1.0
    sentences, _ = prune_vocab.corpus_sentences([data.sample_corpus_path("train")], ["deu"],
                                                log=lambda m: None)
    np.testing.assert_allclose(_embed(output, sentences), _embed(full_model, sentences),
                               atol=1e-6)
