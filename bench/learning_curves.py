r"""Learning curves: retrieval accuracy against pairs seen, from training runs' evaluations.

    python -m labse_tf.train --config=budget_30min --model_dir=RUN ... \
        --eval_data='../shared/data/dev/ntrex/*.tsv' --eval_tatoeba_dir=../shared/data/tatoeba-dev \
        --set train.eval_every=2000
    python -m bench.learning_curves --run=recipe=RUN [--run=NAME=RUN ...] [--note=...]

A curve is the in-training evaluations of one run (labse_tf.train writes them as `eval/`
summaries): `tatoeba_accuracy` is the tatoeba-dev mean, `heldout_accuracy` the retrieval
within each --eval_data language (ntrex-dev here), both the mean of both directions over
languages. Each run becomes one entry of --output (an entry of the same name is replaced):
its config, the CPU, and (step, pairs seen, minutes since the loop started, both
accuracies) per evaluation. Every entry is then plotted to the PNG beside the JSON. The
minutes count from the run's first summary and include the evaluations before each point
(and, for a resumed run, the time it was stopped), so compare them only between runs with
the same evaluation schedule.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import _common  # noqa: E402

from labse_tf import config as config_lib, files, rundir  # noqa: E402

FLAGS = flags.FLAGS
# Summary tags of labse_tf.train's evaluations → the names the curves use.
_METRICS = {"eval/tatoeba_accuracy": "tatoeba_dev", "eval/heldout_accuracy": "ntrex_dev"}


def _define_flags() -> None:
    flags.DEFINE_multi_string("run", [], "NAME=MODEL_DIR: a labse_tf.train run directory and "
                              "the curve's name. Repeatable.")
    flags.DEFINE_string("note", "", "Free text stored with every entry added (what the runs "
                        "differ in, what ran beside them).")
    flags.DEFINE_string("output", _common.default_output("learning_curves"),
                        "The JSON the entries are merged into; the plot is written beside "
                        "it (.png).")


def read_curve(model_dir: str) -> dict:
    """A run's config and its evaluation points, from config.yaml and the eval/ summaries."""
    config_path = files.join(model_dir, rundir.CONFIG_FILE)
    if not files.exists(config_path):
        raise SystemExit(f"{model_dir}: no {rundir.CONFIG_FILE} (is it a labse_tf.train run "
                         "directory?)")
    cfg = config_lib.load_config(config_path)
    events = files.glob(files.join(model_dir, rundir.SUMMARIES_DIR, "events.out.tfevents.*"))
    if not events:
        raise SystemExit(f"{model_dir}: no summaries (is it a labse_tf.train run directory?)")
    start, by_step = None, {}
    for path in sorted(events):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            start = event.wall_time if start is None else min(start, event.wall_time)
            for value in event.summary.value:
                name = _METRICS.get(value.tag)
                if name:
                    point = by_step.setdefault(event.step, {"wall_time": event.wall_time})
                    point[name] = round(float(tf.make_ndarray(value.tensor)), 4)
                    point["wall_time"] = max(point["wall_time"], event.wall_time)
    if not by_step:
        raise SystemExit(f"{model_dir}: no evaluations in its summaries (train with --eval_data"
                         " or --eval_tatoeba_dir and train.eval_every)")
    batch = cfg.train.global_batch_size
    points = [{"step": step, "pairs": step * batch,
               "minutes": round((p.pop("wall_time") - start) / 60, 2), **p}
              for step, p in sorted(by_step.items())]
    return {"config": config_lib.to_dict(cfg), "points": points}


def plot(entries: list, path: str) -> None:
    """Tatoeba-dev (solid) and ntrex-dev (dashed) against millions of pairs, one colour a run."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(8, 5))
    for i, entry in enumerate(entries):
        colour = f"C{i % 10}"
        for metric, style in (("tatoeba_dev", "-"), ("ntrex_dev", "--")):
            points = [p for p in entry["points"] if metric in p]
            if points:
                axis.plot([p["pairs"] / 1e6 for p in points], [100 * p[metric] for p in points],
                          style, marker="o", markersize=3, color=colour,
                          label=f"{entry['name']}: {metric.replace('_', '-')}")
    axis.set_xlabel("pairs seen (millions)")
    axis.set_ylabel("retrieval accuracy, mean of both directions (%)")
    axis.set_title("labse_tf learning curves (solid: tatoeba-dev, dashed: ntrex-dev)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv) -> None:
    del argv
    runs = []
    for spec in FLAGS.run:
        name, sep, model_dir = spec.partition("=")
        if not sep or not name or not model_dir:
            raise SystemExit(f"--run={spec!r}: expected NAME=MODEL_DIR")
        runs.append((name, model_dir))
    if not runs:
        raise SystemExit("give at least one --run=NAME=MODEL_DIR")
    entries = files.read_json(FLAGS.output)["entries"] if files.exists(FLAGS.output) else []
    machine = _common.machine_info()
    for name, model_dir in runs:
        entry = {"name": name, "model_dir": model_dir, "cpu": machine["cpu"],
                 "date": machine["date"], "note": FLAGS.note, **read_curve(model_dir)}
        entries = [e for e in entries if e["name"] != name] + [entry]
        last = entry["points"][-1]
        _common.log(f"{name}: {len(entry['points'])} points, last at {last['pairs']:,} pairs: "
                    + "  ".join(f"{k} {last[k]:.1%}" for k in _METRICS.values() if k in last))
    files.write_json(FLAGS.output, {"entries": entries})
    png = os.path.splitext(FLAGS.output)[0] + ".png"
    plot(entries, png)
    _common.log(f"wrote {FLAGS.output} and {png}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
