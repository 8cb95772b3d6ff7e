"""The Beam preparation pipeline: counts against plain Python, shards training reads,
line numbers as training reports them, the vocabulary against labse_tf.vocab."""

import collections
import gzip
import json
import os
import re
import subprocess
import sys
import unicodedata

import pytest
import tensorflow as tf

from conftest import copy_to_ram
from labse_tf import config as config_lib, corpus, data, prepare, train, vocab

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
QUIET = lambda message: None

# deu (2 columns, gzip): duplicates (one only after NFKC: full-width "Ｈallo", one only
# case-folded), a blank line, a line of one field, and pairs whose target is in the
# exclude file (one in other case).
DEU = ("Hello\tHallo\nHello\tHallo\n\nGood day\tGuten Tag\n\u00a0Ｈello \tHallo\n"
       "just one field\nThe test sentence\tDer Testsatz\nMorning\tMorgen\n"
       "good day\tguten tag\nA test\tDER TESTSATZ\n").encode()
# mixed (3 columns): fra and spa, a deu pair already in deu.tsv.gz (a duplicate across
# files), invalid UTF-8, an empty source field, an excluded source.
MIXED = (b"fra\tYes\tOui\nfra\tYes\tOui\nspa\tYes\tS\xc3\xad\ndeu\tMorning\tMorgen\n"
         b"fra\tNo\t\xffNon\nspa\t \tNada\nfra\tA held-out line\tUne ligne\nspa\tOne\tUno\n"
         b"fra\tTwo\tDeux\nfra\tThree\tTrois\n")
POL = [{"src_raw": "Cat", "tgt_raw": "Kot", "lang": "pol"}] * 3 + [
    {"src_raw": "Dog", "tgt_raw": "Pies", "lang": "pol"}, {"tgt_raw": "Brak"},
    {"src_raw": "House", "tgt_raw": "Dom", "lang": "pol"}]
# Sentences: one a line, or pairs as a test set ships them (each field counts).
EXCLUDE = "Der Testsatz\nA held-out line\tsomething else\n"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    with gzip.open(root / "deu.tsv.gz", "wb") as f:
        f.write(DEU)
    (root / "mixed.tsv").write_bytes(MIXED)
    data.write_tfrecord(str(root / "pol.tfrecord"), POL)
    (root / "test.txt").write_text(EXCLUDE, encoding="utf-8")
    return root


def _independent_count(raw):
    """Plain Python: per input file valid pairs and malformed lines; the kept pairs
    (normalised: NFKC, stripped; compared case-folded, the smallest text kept) and what
    was dropped, per language."""
    excluded_sentences = {unicodedata.normalize("NFKC", x.strip()).lower()
                          for line in EXCLUDE.splitlines() for x in line.split("\t")}
    rows, inputs = [], []
    for name, lines in (("deu.tsv.gz", DEU.split(b"\n")[:-1]), ("mixed.tsv", MIXED.split(b"\n")[:-1])):
        counts, bad = collections.Counter(), 0
        for line in lines:
            if not line.strip():
                continue
            fields = line.split(b"\t")
            fields = ([b"deu"] + fields) if len(fields) == 2 else fields
            try:
                text = [x.decode("utf-8").strip() for x in fields]
            except UnicodeDecodeError:
                text = []
            if len(text) == 3 and all(text):
                counts[text[0]] += 1
                rows.append(text)
            else:
                bad += 1
        inputs.append((dict(counts), bad))
    pol = [[r["lang"], r["src_raw"], r["tgt_raw"]] for r in POL if "src_raw" in r]
    rows += pol
    inputs.append(({"pol": len(pol)}, 1))
    kept, excluded, duplicates = collections.defaultdict(dict), collections.Counter(), collections.Counter()
    for lang, src, tgt in rows:
        src, tgt = (unicodedata.normalize("NFKC", x).strip() for x in (src, tgt))
        key = (src.lower(), tgt.lower())
        if key[0] in excluded_sentences or key[1] in excluded_sentences:
            excluded[lang] += 1
        elif key in kept[lang]:
            duplicates[lang] += 1
            kept[lang][key] = min(kept[lang][key], (src, tgt))
        else:
            kept[lang][key] = (src, tgt)
    kept = {lang: set(texts.values()) for lang, texts in kept.items()}
    return inputs, kept, dict(excluded), dict(duplicates)


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    """The command run on the raw corpus: (output dir, its stdout)."""
    out = tmp_path_factory.mktemp("prepared") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "labse_tf.prepare", f"--input={raw}/*.tsv*",
         f"--input={raw}/pol.tfrecord", f"--output={out}", f"--exclude={raw}/test.txt",
         "--vocab_size=120", "--shard_mb=0.00005"],
        capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_counts_match_an_independent_count(raw, prepared):
    out, stdout = prepared
    inputs, kept, excluded, duplicates = _independent_count(raw)
    assert kept["deu"] == {("Hello", "Hallo"), ("Good day", "Guten Tag"), ("Morning", "Morgen")}
    assert excluded == {"deu": 2, "fra": 1} and duplicates == {"deu": 4, "fra": 1, "pol": 2}
    manifest = corpus.read_manifest(str(out / "manifest.json"))
    prep = manifest.preparation
    assert [(f.pairs, f.malformed) for f in prep.inputs] == inputs
    assert [f.path for f in prep.inputs] == [str(raw / n) for n in ("deu.tsv.gz", "mixed.tsv",
                                                                    "pol.tfrecord")]
    assert manifest.counts() == {lang: len(p) for lang, p in sorted(kept.items())}
    assert prep.excluded == excluded and prep.duplicates == duplicates
    assert prep.exclude_files == (str(raw / "test.txt"),)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs_in"] == 21 and summary["kept"] == 11 and summary["malformed_lines"] == 4
    assert summary["dropped"] == {"excluded": 3, "duplicates": 7}
    assert summary["languages"]["deu"] == {
        "in": 9, "excluded": 2, "duplicates": 4, "kept": 3,
        "shards": sum(1 for f in manifest.files if "deu" in f.pairs)}
    assert summary["shards"] == len(manifest.files)
    assert "21 pairs in, 11 kept; dropped 7 duplicates, 3 excluded; 4 malformed lines" in stdout
    assert f"prepare: read {raw}/mixed.tsv: 8 pairs, 2 malformed, 1 excluded" in stdout


def test_shards_hold_the_kept_pairs_and_training_reads_them(raw, prepared):
    out, _ = prepared
    _, kept, _, _ = _independent_count(raw)
    manifest = corpus.read_manifest(str(out / "manifest.json"))
    # Shards of ~50 bytes: several per language, each named LANG-i-of-N (a shard no pair
    # hashed to is not written), one language each, its count that of its records.
    by_lang = collections.defaultdict(list)
    for f in manifest.files:
        (lang,) = f.pairs
        by_lang[lang].append(os.path.basename(f.path))
        assert sum(1 for _ in tf.data.TFRecordDataset(f.path)) == f.pairs[lang]
        assert f.bytes == os.path.getsize(f.path)
    assert len(by_lang["fra"]) > 1
    for lang, names in by_lang.items():
        n = int(names[0].split("-of-")[1].split(".")[0])
        assert set(names) <= {f"{lang}-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)}
    # Training's reader finds exactly the kept pairs, language by language.
    pairs, found = data.read_pairs([str(out)], log=QUIET)
    assert found == manifest
    assert {lang: set(zip(s, t)) for lang, s, t in zip(pairs.langs, pairs.src, pairs.tgt)} == kept


def test_malformed_lines_are_those_training_reports(raw, prepared):
    out, _ = prepared
    reported = []
    corpus.build_manifest([str(raw / n) for n in ("deu.tsv.gz", "mixed.tsv", "pol.tfrecord")],
                          report=100, log=reported.append)
    expected = {m.replace(": skipped malformed line:", ":").replace(
        ": skipped malformed record:", ":") for m in reported if "skipped malformed" in m}
    got = set((out / "malformed.txt").read_text().splitlines())
    assert got == expected and len(got) == 4
    assert f"{raw}/deu.tsv.gz:6: expected 2 or 3 tab-separated fields, got 1" in got
    assert f"{raw}/pol.tfrecord:5: missing feature 'src_raw'" in got


def test_vocabulary_equals_labse_tf_vocab_on_the_same_corpus(prepared):
    out, _ = prepared
    tokens = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    # labse_tf.vocab with the same settings on the prepared corpus: its sample budget
    # (400,000) covers every sentence, so both learn from the same word counts.
    manifest = data.load_manifest([str(out)], log=QUIET)
    sample = vocab.sample_sentences(manifest, 0.3, 400_000, seed=42)
    assert tokens == vocab.build_vocab([s for g in sample.values() for s in g], 120)
    report = json.loads((out / "vocab.txt.coverage.json").read_text())
    assert report["vocab_size"] == len(tokens) and set(report["languages"]) == set(manifest.langs)


def test_training_runs_and_resumes_from_the_output(prepared, tmp_path, vocab_file):
    out, _ = prepared
    model_dir = str(tmp_path / "run")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    for steps in (4, 8):
        cfg = config_lib.load_config("tiny", [f"train.steps={steps}", "train.checkpoint_every=4",
                                              "train.eval_every=0", "train.steps_per_loop=2",
                                              f"data.vocab_file={vocab_file}"])
        logged = []
        summary = train.train(cfg, strategy=strategy, model_dir=model_dir,
                              train_patterns=[str(out)], log=logged.append)
        assert summary["step"] == steps
    assert any(m.startswith("resumed from") and m.endswith("at step 4") for m in logged)
    assert any("(reused)" in m for m in logged)


def test_urls_in_and_out(raw, prepared):
    """Inputs, exclude file and output on TF's in-memory filesystem (as on gs://): the
    same manifest as the local run, every output at its URL."""
    src = copy_to_ram(str(raw), "prepare_raw")
    summary = prepare.prepare([f"{src}/*.tsv*", f"{src}/pol.tfrecord"], "ram://prepared",
                              exclude=[f"{src}/test.txt"])
    local = corpus.read_manifest(str(prepared[0] / "manifest.json"))
    url = corpus.read_manifest("ram://prepared/manifest.json")
    assert url.counts() == local.counts() and summary["kept"] == local.pairs
    assert [f.path for f in url.files] == [f"ram://prepared/pairs/{lang}-00000-of-00001.tfrecord"
                                           for lang in local.langs]  # 128 MB shards: one each
    assert [f.path for f in url.preparation.inputs] == [
        f"{src}/deu.tsv.gz", f"{src}/mixed.tsv", f"{src}/pol.tfrecord"]
    assert url.preparation.excluded == local.preparation.excluded
    assert tf.io.gfile.exists("ram://prepared/summary.json")
    assert tf.io.gfile.exists("ram://prepared/malformed.txt")


def test_a_prepared_corpus_is_an_input_but_not_its_own_output(prepared, tmp_path):
    out, _ = prepared
    again = prepare.prepare([str(out)], str(tmp_path / "again"))
    assert again["dropped"] == {"excluded": 0, "duplicates": 0}
    assert corpus.read_manifest(str(tmp_path / "again" / "manifest.json")).counts() == (
        corpus.read_manifest(str(out / "manifest.json")).counts())
    with pytest.raises(corpus.DataError, match="the output holds inputs"):
        prepare.prepare([str(tmp_path / "again")], str(tmp_path / "again"))
    assert (tmp_path / "again" / "manifest.json").exists()


def test_small_files_share_a_reader_and_big_ones_have_their_own():
    paths = ["a", "b", "c", "d", "e"]
    assert prepare.file_groups(paths, [1, 1, 1, 1, 1], max_files=2, max_bytes=100) == [
        [(0, "a"), (1, "b")], [(2, "c"), (3, "d")], [(4, "e")]]
    assert prepare.file_groups(paths, [10, 500, 10, 10, 90], max_files=64, max_bytes=100) == [
        [(0, "a")], [(1, "b")], [(2, "c"), (3, "d")], [(4, "e")]]


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(corpus.DataError, match=f"{tmp_path}/none.tsv: no such file"):
        prepare.prepare([str(tmp_path / "none.tsv")], str(tmp_path / "out"))
    with pytest.raises(corpus.DataError, match=r"/\*\.gz: the pattern matches no file"):
        prepare.prepare([str(tmp_path / "*.gz")], str(tmp_path / "out"))
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(corpus.DataError, match=f"{tmp_path}/t.txt: no such file"):
        prepare.prepare([str(tmp_path / "x.tsv")], str(tmp_path / "out"),
                        exclude=[str(tmp_path / "t.txt")])
    # A file that fails while the pipeline reads it, after a good one in the same reader.
    (tmp_path / "y.tsv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(corpus.DataError, match=f"{tmp_path}/y.tsv.gz: cannot read"):
        prepare.prepare([str(tmp_path / "x.tsv"), str(tmp_path / "y.tsv.gz")],
                        str(tmp_path / "out"))


def test_case_is_folded_for_comparison_only_unless_asked(tmp_path):
    (tmp_path / "deu.tsv").write_text("hello\thallo\nHello\tHallo\nHELLO\tHALLO\n"
                                      "The Test\tDer Test\nBye\tTschüss\n", encoding="utf-8")
    (tmp_path / "test.txt").write_text("the test\n")
    out = str(tmp_path / "out")

    def run(**cfg):
        summary = prepare.prepare([str(tmp_path / "deu.tsv")], out,
                                  exclude=[str(tmp_path / "test.txt")],
                                  cfg=prepare.PrepareConfig(**cfg))
        pairs, _ = data.read_pairs([out], log=QUIET)
        return summary["dropped"], {p for s, t in zip(pairs.src, pairs.tgt) for p in zip(s, t)}

    # Compared case-folded (as training folds case), written as given: of the three
    # hellos the smallest text stays, in whichever order the pipeline met them.
    assert run() == ({"excluded": 1, "duplicates": 2},
                     {("HELLO", "HALLO"), ("Bye", "Tschüss")})
    assert run(compare_lowercase=False) == (
        {"excluded": 0, "duplicates": 0},
        {("hello", "hallo"), ("Hello", "Hallo"), ("HELLO", "HALLO"), ("The Test", "Der Test"),
         ("Bye", "Tschüss")})
    assert run(lowercase=True, compare_lowercase=False) == (
        {"excluded": 1, "duplicates": 2}, {("hello", "hallo"), ("bye", "tschüss")})


def test_an_exclude_file_that_is_not_utf8_names_its_line(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\n")
    (tmp_path / "test.txt").write_bytes(b"fine\n\xffbad\n")
    with pytest.raises(corpus.DataError, match=f"{tmp_path}/test.txt:2: not UTF-8"):
        prepare.prepare([str(tmp_path / "x.tsv")], str(tmp_path / "out"),
                        exclude=[str(tmp_path / "test.txt")])


def test_a_rerun_replaces_the_whole_output(tmp_path):
    (tmp_path / "deu.tsv").write_text("a\tb\nbroken line\nc\td\n")
    out = str(tmp_path / "out")
    first = prepare.prepare([str(tmp_path / "deu.tsv")], out,
                            cfg=prepare.PrepareConfig(vocab_size=40))
    assert first["malformed_lines"] == 1 and os.path.exists(first["vocab_file"])
    (tmp_path / "fra.tsv").write_text("e\tf\n")
    second = prepare.prepare([str(tmp_path / "fra.tsv")], out)
    assert second["malformed_lines"] == 0 and second["kept"] == 1
    assert (tmp_path / "out" / prepare.MALFORMED_FILE).read_text() == ""
    assert sorted(os.listdir(out)) == sorted([prepare.PAIRS_DIR, corpus.MANIFEST_FILE,
                                              prepare.MALFORMED_FILE, prepare.SUMMARY_FILE])


def test_unknown_flags_and_bad_shard_sizes_are_errors(tmp_path):
    (tmp_path / "x.tsv").write_text("a\tb\n")
    with pytest.raises(corpus.DataError, match="unknown flag.*--vocab_sise"):
        prepare.prepare([str(tmp_path / "x.tsv")], str(tmp_path / "out"),
                        beam_args=["--vocab_sise=50", "--direct_num_workers=1"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(corpus.DataError, match="shard_mb must be > 0, got 0"):
        prepare.prepare([str(tmp_path / "x.tsv")], str(tmp_path / "out"),
                        cfg=prepare.PrepareConfig(shard_mb=0))


def test_the_core_imports_without_beam_and_help_works():
    block = ("import sys; sys.modules['apache_beam'] = None; "
             "import labse_tf, labse_tf.train, labse_tf.data, labse_tf.vocab\n"
             "try:\n    import labse_tf.prepare\nexcept ImportError as e:\n    print(e)")
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install 'labse_tf[prepare]'" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "labse_tf.prepare", "--help"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # absl ends --help with exit status 1
    assert proc.stdout.startswith("Prepares a corpus at scale on Apache Beam")
    defined = set(re.findall(r"^  --(?:\[no\])?(\w+): \S", proc.stdout, re.M))
    assert {"input", "output", "exclude", "vocab_size", "runner", "shard_mb"} <= defined
