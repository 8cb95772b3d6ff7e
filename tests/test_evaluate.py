"""Retrieval evaluation and the two commands built on it (labse_tf.evaluate, labse_tf.mine).

The commands run in subprocesses on a run directory and on its export; their numbers are
checked against NumPy written here on the full similarity matrix.
"""

import gzip
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import shared_path
from labse_tf import checkpoints, config as config_lib, data, evaluate, export, rundir, train
from labse_tf.model import build_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_ram(tmp_path, commands, *, stage: dict, collect: dict) -> str:
    """Runs `python -m` commands in one process on the `ram://` filesystem; returns stdout.

    Through tests/ram_command.py, which copies `stage` (ram:// path → local file) in first
    and `collect` (ram:// dir → local dir) out at the end. The working directory is empty
    and must stay so: a command that wrote a local file would show there.
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    spec = tmp_path / "ram_spec.json"
    spec.write_text(json.dumps({"stage": stage, "commands": commands, "collect": collect}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "ram_command.py"),
                           str(spec)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert list(cwd.iterdir()) == []
    return done.stdout


def numpy_best(a, b, margin, k):
    """Each a's best b, each b's best a, and the `[n, m]` score matrix, from the definitions."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = a.astype(np.float64) @ b.T.astype(np.float64)
    if margin == "none":
        return sims.argmax(1), sims.argmax(0), sims
    # Mean cosine of each row's (column's) k nearest; only the k nearest by cosine compete.
    a_mean = np.sort(sims, axis=1)[:, -k:].mean(1)
    b_mean = np.sort(sims, axis=0)[-k:, :].mean(0)
    scores = sims / ((a_mean[:, None] + b_mean[None, :]) / 2)
    a_top = sims >= np.sort(sims, axis=1)[:, [-k]]
    b_top = sims >= np.sort(sims, axis=0)[[-k], :]
    return (np.where(a_top, scores, -np.inf).argmax(1),
            np.where(b_top, scores, -np.inf).argmax(0), scores)


def numpy_accuracy(a, b, margin, k):
    """(a→b, b→a) retrieval accuracy for aligned rows a[i] ↔ b[i]."""
    a2b, b2a, _ = numpy_best(a, b, margin, k)
    return float(np.mean(a2b == np.arange(len(a)))), float(np.mean(b2a == np.arange(len(b))))


@pytest.fixture(scope="module")
def heldout():
    """{lang: (translations, english)} from the shipped held-out sample (20 pairs each)."""
    pairs, _ = data.read_pairs([data.sample_corpus_path("heldout")])
    return {lang: (list(tgt), list(src)) for lang, src, tgt in zip(pairs.langs, pairs.src, pairs.tgt)}


@pytest.fixture(scope="module")
def tatoeba_dir(tmp_path_factory, heldout):
    """The held-out sample in the Tatoeba layout."""
    directory = tmp_path_factory.mktemp("tatoeba")
    for lang, (xx, eng) in heldout.items():
        (directory / f"tatoeba.{lang}-eng.{lang}").write_text("\n".join(xx) + "\n", "utf-8")
        (directory / f"tatoeba.{lang}-eng.eng").write_text("\n".join(eng) + "\n", "utf-8")
    return str(directory)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, vocab_file):
    """A run directory whose checkpoint is a freshly initialised mean-pooling encoder.

    Not conftest's tiny_run: its [CLS] embeddings are still collapsed (every pairwise cosine
    above 0.99999), so its rankings would be float32 rounding. Written as train.train writes
    it (prepare_run, then an `encoder` checkpoint), without compiling a training loop.
    """
    model_dir = str(tmp_path_factory.mktemp("run"))
    cfg = config_lib.load_config("tiny", ["model.pooling=mean", f"data.vocab_file={vocab_file}"])
    cfg, _, preprocessor = train.prepare_run(cfg, model_dir, [data.sample_corpus_path("train")],
                                                log=lambda m: None)
    keras.utils.set_random_seed(0)
    encoder = build_encoder(cfg.model, preprocessor.vocab_size)
    tf.train.CheckpointManager(tf.train.Checkpoint(encoder=encoder), max_to_keep=1,
                               directory=os.path.join(model_dir, rundir.CHECKPOINT_DIR)).save()
    return model_dir


@pytest.fixture(scope="module")
def run_embed_fn(run_dir):
    """The run's latest checkpoint embedding in memory: the reference for every path."""
    _, preprocessor, encoder, _ = checkpoints.load_run(run_dir)
    return evaluate.encoder_embed_fn(preprocessor, encoder)


@pytest.fixture(scope="module")
def export_dir(run_dir, tmp_path_factory):
    """The run exported by labse_tf.export."""
    _, preprocessor, encoder, _ = checkpoints.load_run(run_dir)
    path = str(tmp_path_factory.mktemp("export"))
    export.export_model(preprocessor, encoder, path, seq_length=preprocessor.seq_length)
    return path


@pytest.fixture(params=["run", "export"])
def model_flag(request):
    """--model_dir=RUN or --model=EXPORT."""
    if request.param == "run":
        return f"--model_dir={request.getfixturevalue('run_dir')}"
    return f"--model={request.getfixturevalue('export_dir')}"


def test_read_tatoeba(tatoeba_dir, heldout):
    assert evaluate.read_tatoeba(tatoeba_dir) == {lang: heldout[lang] for lang in sorted(heldout)}
    assert list(evaluate.read_tatoeba(tatoeba_dir, ["ukr", "deu"])) == ["ukr", "deu"]
    with pytest.raises(FileNotFoundError, match=r"no Tatoeba files for \['pol'\]"):
        evaluate.read_tatoeba(tatoeba_dir, ["pol"])


def test_read_tatoeba_rejects_misaligned_files(tmp_path):
    (tmp_path / "tatoeba.pol-eng.pol").write_text("a\nb\n", "utf-8")
    (tmp_path / "tatoeba.pol-eng.eng").write_text("a\n", "utf-8")
    with pytest.raises(ValueError, match=r"tatoeba.pol-eng.pol has 2 lines but .*eng has 1"):
        evaluate.read_tatoeba(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no tatoeba"):
        evaluate.read_tatoeba(str(tmp_path / "missing"))


@pytest.mark.parametrize("margin", ["none", "ratio"])
def test_retrieval_accuracy_matches_numpy(margin):
    rng = np.random.default_rng(0)
    a = rng.normal(size=[60, 8]).astype(np.float32)
    b = (a + rng.normal(size=[60, 8])).astype(np.float32)   # noisy: about half retrieved
    got = evaluate.retrieval_accuracy(a, b, margin=margin, k=3)
    assert got == pytest.approx(numpy_accuracy(a, b, margin, 3))
    assert 0.2 < got[0] < 0.9


def test_serving_version_dir_picks_the_highest_version(tmp_path):
    for name in ["1", "3", "10", ".tmp-11", "12"]:
        (tmp_path / "serving" / name).mkdir(parents=True)
        if name != "12":  # 12 is being written: no saved_model.pb yet
            (tmp_path / "serving" / name / "saved_model.pb").write_bytes(b"")
    expected = str(tmp_path / "serving" / "10")
    assert evaluate.serving_version_dir(str(tmp_path)) == expected
    assert evaluate.serving_version_dir(str(tmp_path / "serving")) == expected
    assert evaluate.serving_version_dir(str(tmp_path / "serving" / "3")).endswith("3")
    with pytest.raises(FileNotFoundError, match="expected EXPORT_DIR/serving/<version>"):
        evaluate.serving_version_dir(str(tmp_path / "serving" / "12"))


@pytest.mark.slow
def test_export_embed_fn_matches_the_run(export_dir, run_embed_fn, heldout):
    sentences = [s for xx, eng in heldout.values() for s in xx + eng]
    got = evaluate.embed_fn_from_export(export_dir, batch_size=64)(sentences)
    np.testing.assert_allclose(got, run_embed_fn(sentences), atol=1e-5)
    # Trimmed batches give what TF Serving's signature (every batch padded to the export's
    # sequence length) gives.
    import tensorflow_hub as hub
    serve = hub.load(evaluate.serving_version_dir(export_dir)).signatures[export.SIGNATURE_KEY]
    served = serve(**{export.SERVING_INPUT: tf.constant(sentences)})[export.SERVING_OUTPUT]
    np.testing.assert_allclose(got, served, atol=1e-6)
    with pytest.raises(ValueError, match=r"serving_default maps \['text'\] to \['input_mask', "
                                         r"'input_type_ids', 'input_word_ids'\], expected "
                                         r"\['text'\] to \['embeddings'\]"):
        evaluate.embed_fn_from_export(os.path.join(export_dir, "preprocessor"))


@pytest.mark.slow
def test_evaluate_command(model_flag, tatoeba_dir, run_embed_fn, heldout, tmp_path):
    """The Tatoeba files are read from ram://, the results written there."""
    stage = {f"ram://tatoeba/{name}": os.path.join(tatoeba_dir, name)
             for name in os.listdir(tatoeba_dir)}
    stdout = run_in_ram(tmp_path, [["labse_tf.evaluate", model_flag, "--tatoeba_dir=ram://tatoeba",
                                    "--langs=ukr,deu,cmn", "--margin=ratio", "--k=3",
                                    "--output=ram://out/results.json"]],
                        stage=stage, collect={"ram://out": str(tmp_path / "out")})
    results = json.loads((tmp_path / "out" / "results.json").read_text("utf-8"))
    assert list(results["languages"]) == ["ukr", "deu", "cmn"]
    for lang, got in results["languages"].items():
        xx, eng = heldout[lang]
        x2e, e2x = numpy_accuracy(run_embed_fn(xx), run_embed_fn(eng), "ratio", 3)
        assert got == pytest.approx({"xx_to_eng": x2e, "eng_to_xx": e2x,
                                     "mean": (x2e + e2x) / 2, "pairs": 20})
        assert re.search(rf"^{lang} +20 ", stdout, re.M)
    assert results["mean_accuracy"] == pytest.approx(
        np.mean([v["mean"] for v in results["languages"].values()]))
    assert (results["margin"], results["k"], results["index"]) == ("ratio", 3, "auto")
    assert results["tatoeba_dir"] == "ram://tatoeba"
    assert stdout.rstrip().endswith("results: ram://out/results.json")


@pytest.fixture(scope="module")
def mining_files(tmp_path_factory, heldout):
    """50 translations (one per English sentence) against those 50 English sentences and 10
    others; the source file also has a blank and a repeated line, which are skipped."""
    english = {}
    for lang, (xx, eng) in heldout.items():
        english.update({e: x for x, e in zip(xx, eng) if e not in english})
    pairs = list(english.items())[:50]
    src = [x for _, x in pairs]
    tgt = [e for e, _ in list(english.items())[::-1]]
    directory = tmp_path_factory.mktemp("mining")
    (directory / "src.txt").write_text("\n".join(src[:25] + ["", src[3]] + src[25:]) + "\n",
                                       "utf-8")
    (directory / "tgt.txt").write_text("\n".join(tgt) + "\n", "utf-8")
    (directory / "gold.tsv").write_text("".join(f"{x}\t{e}\n" for e, x in pairs), "utf-8")
    return directory, src, tgt, {(x, e) for e, x in pairs}


@pytest.mark.slow
def test_mine_command(export_dir, mining_files, run_embed_fn, tmp_path):
    """labse_tf.embed on both files, then labse_tf.mine on the text and on the embeddings,
    every file on ram:// (the source gzipped). On the export (the run directory goes
    through the same loader, evaluate_command)."""
    directory, src, tgt, gold = mining_files
    # The reference: forward and backward best by margin among the 3 nearest, then the
    # one-to-one greedy "max" selection from the highest score down.
    s2t, t2s, margins = numpy_best(run_embed_fn(src), run_embed_fn(tgt), "ratio", 3)
    candidates = {(margins[i, j], i, j) for i, j in enumerate(s2t)}
    candidates |= {(margins[i, j], i, j) for j, i in enumerate(t2s)}
    mined, used_src, used_tgt = [], set(), set()
    for score, i, j in sorted(candidates, reverse=True):
        if i not in used_src and j not in used_tgt:
            mined.append((score, src[i], tgt[j]))
            used_src.add(i)
            used_tgt.add(j)
    # A threshold halfway between two candidate scores, keeping about half of them.
    threshold = (mined[len(mined) // 2][0] + mined[len(mined) // 2 + 1][0]) / 2
    kept = [m for m in mined if m[0] >= threshold]
    with open(directory / "src.txt", "rb") as f, gzip.open(tmp_path / "src.txt.gz", "wb") as g:
        g.write(f.read())
    stage = {"ram://in/src.txt.gz": str(tmp_path / "src.txt.gz"),
             "ram://in/tgt.txt": str(directory / "tgt.txt"),
             "ram://in/gold.tsv": str(directory / "gold.tsv")}
    mine = ["labse_tf.mine", "--src=ram://in/src.txt.gz", "--tgt=ram://in/tgt.txt",
            "--gold=ram://in/gold.tsv", "--k=3", f"--threshold={threshold}"]
    stdout = run_in_ram(tmp_path, [
        ["labse_tf.embed", f"--model={export_dir}", "--input=ram://in/src.txt.gz",
         "--output_dir=ram://emb/src", "--dtype=float32", "--shard_size=16"],
        ["labse_tf.embed", f"--model={export_dir}", "--input=ram://in/tgt.txt",
         "--output_dir=ram://emb/tgt", "--dtype=float32"],
        [*mine, "--src_embeddings=ram://emb/src", "--tgt_embeddings=ram://emb/tgt",
         "--out=ram://out/from_embeddings.tsv"],
        [*mine, f"--model={export_dir}", "--out=ram://out/pairs.tsv"],
    ], stage=stage, collect={"ram://out": str(tmp_path / "out"), "ram://emb": str(tmp_path / "emb")})
    meta = json.loads((tmp_path / "emb" / "src" / "index.json").read_text("utf-8"))
    assert [s["rows"] for s in meta["shards"]] == [16, 16, 16, 3]   # 52 lines, one blank
    assert meta["complete"] and meta["source"] == "ram://in/src.txt.gz"
    for name in ["pairs.tsv", "from_embeddings.tsv"]:
        rows = [line.split("\t") for line in (tmp_path / "out" / name).read_text("utf-8")
                .splitlines()]
        assert [(x, e) for _, x, e in rows] == [(x, e) for _, x, e in kept]
        np.testing.assert_allclose([float(s) for s, _, _ in rows], [s for s, _, _ in kept],
                                   rtol=1e-5)
    # The gold scores of the second mining (from the text).
    stdout = stdout[stdout.rindex("candidate pairs have a margin"):]
    correct = [(x, e) in gold for _, x, e in mined]

    def precision_recall_f1(n):  # keeping the n best candidates
        p, r = sum(correct[:n]) / n, sum(correct[:n]) / len(gold)
        return p, r, 2 * p * r / (p + r) if p else 0.0

    at = re.search(r"at threshold \S+: precision (\S+) recall (\S+) F1 (\S+)", stdout)
    assert [float(v) for v in at.groups()] == pytest.approx(precision_recall_f1(len(kept)),
                                                            abs=1e-4)
    n = max(range(1, len(mined) + 1), key=lambda n: (precision_recall_f1(n)[2], -n))
    best = re.search(r"best threshold (\S+): precision (\S+) recall (\S+) F1 (\S+)", stdout)
    assert [float(v) for v in best.groups()] == pytest.approx(
        [mined[n - 1][0], *precision_recall_f1(n)], abs=1e-4)


@pytest.mark.slow
def test_shared_tatoeba_dev(run_embed_fn):
    """A real development language, from ../shared (skipped without it)."""
    tatoeba = evaluate.read_tatoeba(shared_path("data", "tatoeba-dev"), ["pol"])
    xx, eng = tatoeba["pol"]
    results = evaluate.evaluate_tatoeba(run_embed_fn, tatoeba, margin="ratio")
    x2e, e2x = numpy_accuracy(run_embed_fn(xx), run_embed_fn(eng), "ratio", 4)
    assert results["languages"]["pol"] == pytest.approx(
        {"xx_to_eng": x2e, "eng_to_xx": e2x, "mean": (x2e + e2x) / 2, "pairs": len(xx)})
