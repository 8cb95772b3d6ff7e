"""The budget recipe script, as a two-minute smoke run on the shipped sample corpus."""

import gzip
import json
import os
import re
import subprocess

import pytest

from labse_tf import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_recipe_runs_end_to_end_and_compares_with_the_baseline(tmp_path):
    train, _ = data.read_pairs([data.sample_corpus_path("train")])
    heldout, _ = data.read_pairs([data.sample_corpus_path("heldout")])
    (tmp_path / "data" / "train").mkdir(parents=True)
    for lang, src, tgt in zip(train.langs, train.src, train.tgt):
        with gzip.open(tmp_path / "data" / "train" / f"{lang}.tsv.gz", "wt", encoding="utf-8") as f:
            f.writelines(f"{lang}\t{s}\t{t}\n" for s, t in zip(src, tgt))
    tatoeba = tmp_path / "tatoeba"
    tatoeba.mkdir()
    for lang, src, tgt in zip(heldout.langs, heldout.src, heldout.tgt):
        (tatoeba / f"tatoeba.{lang}-eng.{lang}").write_text("\n".join(tgt) + "\n", encoding="utf-8")
        (tatoeba / f"tatoeba.{lang}-eng.eng").write_text("\n".join(src) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    env = dict(os.environ, CONFIG="tiny", VOCAB_SIZE="2000", VOCAB_SENTENCES="2000",
               EXTRA_SET="train.steps=40 train.eval_every=0")
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "budget_recipe.sh"),
                           str(tmp_path / "data"), str(tatoeba), str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = json.loads((out / "tatoeba.json").read_text())
    baseline = json.loads((out / "trigram.json").read_text())
    assert set(model["languages"]) == set(heldout.langs) == set(baseline["languages"])
    table = proc.stdout[proc.stdout.index("model vs trigram baseline"):]
    assert "language      model  trigram" in table
    assert f"{100 * model['mean_accuracy']:.1f}%" in table.splitlines()[-2]
    assert (out / "export" / "serving" / "1" / "saved_model.pb").exists()
    # Training was given the 30 minutes less the vocabulary's time and the 3-minute reserve.
    minutes = float(re.search(r"\(tiny, ([\d.]+) min of training steps\)", proc.stdout).group(1))
    assert 25.0 < minutes <= 27.0
    assert f"time_budget_minutes: {minutes}" in (out / "model" / "config.yaml").read_text()
