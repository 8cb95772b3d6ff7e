"""A built wheel carries the named configs and the sample corpus and works installed.

The wheel is built from a copy of the files setup.cfg packages (so nothing is written into
the checkout), installed into an empty directory, and used from a process whose working
directory and import path hold no source tree.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from labse_tf import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["budget_30min.yaml", "labse_base.yaml", "labse_pretrain.yaml", "small.yaml",
           "tiny.yaml", "tiny_pretrain.yaml"]
SAMPLE_DATA = ["README.md", "heldout.tsv", "train.tsv"]

INSTALLED_SCRIPT = r'''
import json, sys
import labse_tf
from labse_tf import config, data
pairs, _ = data.read_pairs([data.sample_corpus_path("train")])
print(json.dumps({"package": labse_tf.__file__, "tiny": config.resolve_path("tiny"),
                  "config": config.to_dict(config.load_config("tiny")),
                  "pairs": len(pairs.flat()[0])}))
'''


def _pip(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_wheel_carries_configs_and_sample_corpus_and_resolves_named_configs(tmp_path):
    assert sorted(n for n in os.listdir(config_lib.CONFIG_DIR) if n.endswith(".yaml")) == CONFIGS
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for name in ("labse_tf", "configs"):
        shutil.copytree(os.path.join(ROOT, name), source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
         str(source), cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("labse_tf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"labse_tf/configs/{name}" for name in CONFIGS} <= names
    assert {f"labse_tf/sample_data/{name}" for name in SAMPLE_DATA} <= names

    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", INSTALLED_SCRIPT], cwd=elsewhere,
                          env={**env, "PYTHONPATH": str(target)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = json.loads(done.stdout.strip().splitlines()[-1])
    assert installed["package"] == str(target / "labse_tf" / "__init__.py")
    assert installed["tiny"] == str(target / "labse_tf" / "configs" / "tiny.yaml")
    assert installed["config"] == config_lib.to_dict(config_lib.load_config("tiny"))
    assert installed["pairs"] == 490  # the whole sample corpus
