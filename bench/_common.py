"""What every benchmark script shares: interleaved timing, machine facts, tables, JSON output.

The machine these run on is shared, so a contender is never timed in one long block: every
contender runs one timed window in turn (A, B, C, then C, B, A, ...), after warm-up, and each
is summarised by the median of its windows. Ratios of medians measured in the same run are
what the README reports; absolute rates are listed but move with the load.
"""

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Callable, Mapping, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "bench", "results")
# Marks the one stdout line a worker subprocess returns its result on.
_RESULT_PREFIX = "BENCH_RESULT "


def log(msg: str) -> None:
    print(msg, flush=True)


def default_output(name: str) -> str:
    return os.path.join(RESULTS_DIR, f"{name}.json")


# CPU features that decide what fp32/bf16 matmuls can run at.
_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


def _cpu_model() -> str:
    """`model name (family F model M)` and the matmul-relevant flags, from /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    flags = [f for f in _FLAGS_OF_INTEREST if f in fields.get("flags", "").split()]
    return (f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}; {' '.join(flags) or 'no AVX'})")


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Date, CPU, memory, load and package versions: the context a timing needs."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _mem_total_gib(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in ("tensorflow", "keras", "keras-hub", "tf-keras",
                                              "tensorflow-text", "tf-models-official", "numpy")},
    }


def announce_machine() -> dict:
    """Logs the machine line every benchmark starts with; returns `machine_info()`."""
    machine = machine_info()
    log(f"{machine['date']}  {machine['cpu']}, {machine['cores']} cores, load "
        f"{machine['load_average_1_5_15']}")
    return machine


def check_names(flag: str, chosen: Sequence[str], known: Sequence[str]) -> None:
    """A usage error naming the flag and its unknown values, if any."""
    unknown = [c for c in chosen if c not in known]
    if unknown:
        from absl import app
        raise app.UsageError(f"--{flag}: unknown {unknown}; known: {list(known)}")


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def interleaved(contenders: Mapping[str, Callable[[], int]], *, windows: int, warmup: int,
                label: str = "items") -> tuple[dict, dict]:
    """Rates of each contender's windows, timed in turn.

    Besides wall-clock rates, each window's rate per CPU-second of this process is kept:
    on a shared machine it moves less with the load (a process that waits for a core
    uses no CPU time meanwhile), though contention still inflates it somewhat.

    Args:
      contenders: name → callable running one window and returning the units it processed.
      windows: int. Timed windows per contender.
      warmup: int. Untimed windows per contender first (tracing, compilation, caches).
      label: str. Unit name for the progress lines.

    Returns:
      (rates, cpu_rates): name → list of per-window units per wall-clock second, and per
      CPU-second of this process (all threads), in the order the windows ran.
    """
    names = list(contenders)
    for w in range(warmup):
        for name in names:
            tick = time.perf_counter()
            contenders[name]()
            log(f"  warm-up {w + 1}/{warmup} {name}: {time.perf_counter() - tick:.1f} s")
    rates = {name: [] for name in names}
    cpu_rates = {name: [] for name in names}
    for w in range(windows):
        # Serpentine order (A B C, C B A, ...) so a drift in load favours no contender.
        for name in (names if w % 2 == 0 else names[::-1]):
            tick, cpu = time.perf_counter(), time.process_time()
            units = contenders[name]()
            wall, cpu = time.perf_counter() - tick, time.process_time() - cpu
            rates[name].append(units / wall)
            cpu_rates[name].append(units / cpu)
            log(f"  window {w + 1}/{windows} {name}: {units / wall:,.1f} {label}/s, "
                f"{units / cpu:,.1f} per CPU-s ({cpu / wall:.2f} cores busy; load "
                f"{os.getloadavg()[0]:.2f})")
    return rates, cpu_rates


def summarize(rates: Sequence[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "windows": [round(r, 2) for r in rates]}


def ratio(rates: Mapping[str, Sequence[float]], a: str, b: str) -> dict:
    """Median(a) / median(b), with the spread of the ratios of windows timed next to each other."""
    paired = [x / y for x, y in zip(rates[a], rates[b])]
    return {"ratio": statistics.median(rates[a]) / statistics.median(rates[b]),
            "paired_min": min(paired), "paired_max": max(paired)}


def rate_report(rates: Mapping, cpu_rates: Mapping, ratios: Sequence[tuple], *, unit: str,
                notes: Mapping[str, str] | None = None) -> dict:
    """Prints and returns the medians and the requested ratios of an `interleaved` run.

    Args:
      rates, cpu_rates: from `interleaved`.
      ratios: (numerator, denominator, target or None); pairs not both measured are skipped.
      unit: str. What the rates count, e.g. "pairs/s".
      notes: name → a remark for the table.

    Returns:
      {"rates": name → summary (with "per_cpu_second"), "ratios": "a / b" → ratio of
      medians, paired spread, the same ratio per CPU-second, target}.
    """
    notes = notes or {}
    summary = {n: {**summarize(r), "per_cpu_second": summarize(cpu_rates[n])}
               for n, r in rates.items()}
    found = {}
    for a, b, target in ratios:
        if a in rates and b in rates:
            found[f"{a} / {b}"] = {**ratio(rates, a, b),
                                   "cpu_ratio": ratio(cpu_rates, a, b)["ratio"], "target": target}
    log("")
    log(table(["contender", f"median {unit}", "min", "max", "per CPU-s", "note"],
              [[n, f"{s['median']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}",
                f"{s['per_cpu_second']['median']:.1f}", notes.get(n, "")]
               for n, s in summary.items()]))
    if found:
        log("")
        log(table(["ratio of medians", "value", "paired windows", "per CPU-s", "target"],
                  [[k, f"{v['ratio']:.2f}", f"{v['paired_min']:.2f}..{v['paired_max']:.2f}",
                    f"{v['cpu_ratio']:.2f}", v["target"] or ""] for k, v in found.items()]))
    return {"rates": summary, "ratios": found}


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A fixed-width text table (also valid Markdown)."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), rule] + [fmt(r) for r in cells[1:]])


def write_json(results: dict, output: str) -> str:
    """Writes the results (with the command line that made them) as JSON; returns the text."""
    results = {"command": " ".join(["python", *sys.orig_argv[1:]]), **results}
    text = json.dumps(results, indent=1, ensure_ascii=False)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return text


def write_results(results: dict, output: str) -> None:
    """Writes the results as JSON and prints them."""
    log(write_json(results, output))
    log(f"results: {os.path.abspath(output)}")


def emit_worker_result(result: dict) -> None:
    """A worker subprocess's answer to `run_worker`: one marked JSON line on stdout."""
    print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(module: str, args: Sequence[str], timeout: float | None = None) -> dict:
    """Runs `python -m bench.<module> ARGS` in a fresh process; returns its emitted result.

    A fresh process per measurement, so its peak RSS belongs to that measurement alone.
    Raises RuntimeError with the worker's last output lines if it fails.
    """
    cmd = [sys.executable, "-m", f"bench.{module}", *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} without a result:\n{tail}")
