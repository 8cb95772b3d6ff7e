"""Runs labse_tf commands in this one process on TensorFlow's in-memory `ram://` filesystem.

    python tests/ram_command.py SPEC.json

SPEC: {"stage": {"ram://…": "LOCAL_FILE", …},      copied into ram:// first
       "commands": [["labse_tf.embed", "--flag=…", …], …],   run in order, as `python -m`
       "collect": {"ram://DIR": "LOCAL_DIR", …}}    copied out at the end (also after a failure)

`ram://` lives inside one process, so a test that wants a command to read and write only
ram:// paths (no local file appearing anywhere) runs it here. Each command's flags are
removed after it runs, so the next can define flags of the same names. Exits with the
first non-zero exit code, or 0.
"""

import json
import os
import runpy
import sys

import tensorflow as tf
from absl import flags


def copy_tree(src: str, dst: str) -> None:
    for directory, _, names in tf.io.gfile.walk(src):
        target = os.path.join(dst, os.path.relpath(directory, src)) if directory != src else dst
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(f"{directory}/{name}", os.path.join(target, name), overwrite=True)


def main(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    for ram_path, local in spec.get("stage", {}).items():
        tf.io.gfile.makedirs(ram_path.rsplit("/", 1)[0])
        tf.io.gfile.copy(local, ram_path, overwrite=True)
    code = 0
    for module, *args in spec["commands"]:
        before = set(flags.FLAGS)
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
        if code:
            break
    for ram_dir, local in spec.get("collect", {}).items():
        if tf.io.gfile.exists(ram_dir):
            copy_tree(ram_dir, local)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
