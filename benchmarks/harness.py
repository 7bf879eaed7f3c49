"""What the timing benchmarks (speed.py, images.py) share: fresh worker processes per
measurement, wall / CPU clocks that also record how much CPU *other* processes used meanwhile,
medians over repeats, the load average and the git state, and the common command-line options.

A benchmark script is both the parent and its workers: ``Runner`` starts ``script --single
SPEC`` in a fresh process for every measurement (threads pinned through the OMP/MKL/OpenBLAS
variables as well), and the worker prints one JSON line that the parent records.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A measurement during which other processes used more than this share of the CPUs is contended.
CONTENDED = 0.10
# Seconds a worker may spend on imports, data and model loading on top of its measurement.
SETUP_ALLOWANCE = 120.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes on the machine have used (from /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def warn_if_busy() -> None:
    """One line on stderr when other processes keep the CPUs busy right now."""
    before = busy_cpu_seconds()
    time.sleep(1.0)
    after = busy_cpu_seconds()
    if before is not None and after is not None and after - before > 0.25:
        log(f"warning: other processes are using {after - before:.1f} CPUs of {os.cpu_count()}: they "
            "compete for the cores and slow the measurements (see --retries, --quiet-wait)")


class Clock:
    """Wall and CPU seconds of a phase (CUDA is synchronised before each reading), and the CPU
    seconds *other* processes used meanwhile: a direct measure of contention for the cores."""

    def __init__(self, device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.other_cpu, self.clocked = 0.0, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        self._sync()
        self.busy = busy_cpu_seconds()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        self._sync()
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.clocked += wall
        busy = busy_cpu_seconds()
        if busy is not None and self.busy is not None:
            self.other_cpu += max(0.0, busy - self.busy - cpu)
        return wall, cpu


def json_safe(value):
    """Solver info and the like, made JSON-serialisable (numbers rounded)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    try:
        return float(f"{float(value):.6g}")
    except (TypeError, ValueError):
        return str(value)


def measure_method(make, train, groups, test, clock: Clock, memory, warmup: bool):
    """Time ``make().fit(train, groups)`` and ``.attribute(test)`` with peak memory, after an
    optional warm-up on 64 training points and 2 test points (one-time costs: lazy imports,
    first vmap / functional_call traces). Returns (the record, the scores)."""
    import numpy as np

    from gda_core.attribution.grouping import Groups

    warmup_seconds = 0.0
    if warmup:
        clock.start()
        make().fit(train.subset(slice(0, 64)), Groups(np.arange(64), 64)).attribute(test.subset(slice(0, 2)))
        warmup_seconds = clock.stop()[0]
        clock.reset()
    method = make()
    memory.start()
    clock.start()
    method.fit(train, groups)
    fit_seconds, fit_cpu = clock.stop()
    clock.start()
    scores = method.attribute(test)
    attribute_seconds, attribute_cpu = clock.stop()
    peak = memory.stop()
    info = {}
    for name in ("damping_", "solver_info_", "gradient_path_"):
        if hasattr(method, name):
            info[name.rstrip("_")] = json_safe(getattr(method, name))
    record = {"fit_seconds": fit_seconds, "attribute_seconds": attribute_seconds,
              "cpu_seconds": fit_cpu + attribute_cpu, **peak, "warmup_seconds": warmup_seconds,
              "other_cpu_seconds": clock.other_cpu, "clocked_seconds": clock.clocked,
              "scores_shape": list(scores.shape), "scores_finite": bool(np.isfinite(scores).all()),
              "method_info": info}
    return record, scores


def measure_grouping(spec: dict, train, module, clock: Clock, memory, labels_path: Path) -> dict:
    """Time ``spec["grouping"]`` at ``spec["k"]`` groups on ``train`` with peak memory (after an
    optional warm-up on 256 points), save its labels to ``labels_path``; return the record."""
    import numpy as np

    from gda_core.attribution.grouping import make_grouping

    def strategy_for(k):
        return (make_grouping("per-example") if spec["grouping"] == "per-example"
                else make_grouping(spec["grouping"], k, seed=0))

    warmup = 0.0
    if spec["warmup"]:  # one-time imports and first-call costs, on 256 points
        clock.start()
        strategy_for(min(spec["k"], 8)).fit(train.subset(slice(0, 256)), module)
        warmup = clock.stop()[0]
        clock.reset()
    strategy = strategy_for(spec["k"])
    memory.start()
    clock.start()
    groups = strategy.fit(train, module)
    seconds, cpu = clock.stop()
    peak = memory.stop()
    np.save(labels_path, groups.labels)
    sizes = groups.sizes
    return {"seconds": seconds, "cpu_seconds": cpu, **peak, "n_groups": int(groups.n_groups),
            "warmup_seconds": warmup, "other_cpu_seconds": clock.other_cpu, "clocked_seconds": clock.clocked,
            "group_size_min": int(sizes.min()), "group_size_max": int(sizes.max()),
            "group_size_median": float(np.median(sizes))}


class Runner:
    """Starts workers (``script --single SPEC``), each in a fresh process."""

    def __init__(self, args, sizes: dict, work_dir: Path, script: str | Path):
        self.args, self.sizes, self.work_dir, self.script = args, sizes, work_dir, str(Path(script).resolve())
        self.env = dict(os.environ)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            self.env[name] = str(args.threads)
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.count = 0

    def run(self, job: dict, timeout: float) -> dict:
        """Run a job; with --retries, again (after waiting for a quiet machine) while other
        processes took more than CONTENDED of the CPUs during the measured phases."""
        result = None
        for attempt in range(self.args.retries + 1):
            if attempt or self.args.quiet_wait:
                self.wait_until_quiet()
            result = self.run_once(job, timeout)
            result["attempts"] = attempt + 1
            if result["status"] != "ok" or contention(result) <= CONTENDED:
                break
            log(f"  contended ({100 * contention(result):.0f}% of the CPUs busy elsewhere): "
                + ("retrying" if attempt < self.args.retries else "keeping it"))
        return result

    def wait_until_quiet(self) -> None:
        """Wait (up to --quiet-wait seconds) until other processes use < 0.25 CPU."""
        deadline = time.perf_counter() + self.args.quiet_wait
        while True:
            before = busy_cpu_seconds()
            time.sleep(1.0)
            after = busy_cpu_seconds()
            if before is None or after is None or after - before < 0.25 or time.perf_counter() > deadline:
                return
            time.sleep(4.0)

    def run_once(self, job: dict, timeout: float) -> dict:
        """The worker's result, or {"status": "timeout" | "error", "note": ...}."""
        spec = {**self.sizes, "threads": self.args.threads, "device": self.args.device,
                "warmup": not self.args.no_warmup, "work_dir": str(self.work_dir), **job}
        self.count += 1
        log_path = self.work_dir / f"worker-{self.count}.log"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        started = time.perf_counter()
        with open(log_path, "w") as stderr:
            try:
                done = subprocess.run([sys.executable, self.script, "--single", json.dumps(spec)],
                                      stdout=subprocess.PIPE, stderr=stderr, env=self.env, cwd=str(ROOT),
                                      timeout=timeout, text=True, check=False)
            except subprocess.TimeoutExpired:
                return {"status": "timeout", "load_average_1min": load,
                        "note": f"stopped after {timeout:.0f} s (worker wall time incl. setup)"}
        wall = time.perf_counter() - started
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0 or not lines:
            tail = log_path.read_text().strip().splitlines()[-3:]
            return {"status": "error", "note": f"worker exit {done.returncode}: " + " | ".join(tail)}
        result = json.loads(lines[-1])
        result.update(status="ok", worker_wall_seconds=wall, load_average_1min=load)
        return result


def record_attribution(entry: dict, result: dict, grouping_result: dict) -> None:
    """Add a measure worker's ``result`` to ``entry`` with the totals (attribution = fit +
    attribute; total = attribution + the grouping's seconds), and log them."""
    entry.update(result)
    if result["status"] != "ok":
        log(f"  {result['status']}: {result['note']}")
        return
    entry["attribution_seconds"] = result["fit_seconds"] + result["attribute_seconds"]
    entry["grouping_seconds"] = grouping_result["seconds"]
    entry["grouping_peak_mb"] = grouping_result["peak_mb"]
    entry["total_seconds"] = entry["attribution_seconds"] + entry["grouping_seconds"]
    log(f"  attribution {entry['attribution_seconds']:.2f} s (fit {result['fit_seconds']:.2f}, "
        f"attribute {result['attribute_seconds']:.2f}), +grouping {entry['grouping_seconds']:.2f} s, "
        f"peak +{result['peak_mb']:.0f} MB")


def git_state() -> dict | None:
    """The commit and whether gda_core/ has uncommitted changes: workers import the engine from
    disk, so an edit during the run would mix versions (compare the start and end states)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gda_core"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head or None, "gda_core_uncommitted_changes": bool(dirty)}


def contention(result: dict) -> float:
    """Share of the machine's CPU capacity other processes used during the measured phases."""
    other, clocked = result.get("other_cpu_seconds"), result.get("clocked_seconds")
    if other is None or not clocked:
        return 0.0
    return other / (clocked * (os.cpu_count() or 1))


def contention_warnings(labelled: list[tuple[str, dict]], cpus: int) -> list[str]:
    """Measurements (label, result) during which other processes used > CONTENDED of the CPUs."""
    warnings = []
    for label, result in labelled:
        other, wall = result.get("other_cpu_seconds"), result.get("clocked_seconds")
        if result.get("status", "ok") == "ok" and other is not None and wall and other > CONTENDED * wall * cpus:
            warnings.append(f"{label}: other processes used {other:.1f} CPU-s during {wall:.1f} s "
                            f"({100 * other / (wall * cpus):.0f}% of {cpus} CPUs); its time is inflated")
    return warnings


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rounded(value, digits=4):
    return None if value is None else round(float(value), digits)


def measure_repeated(runner: Runner, job: dict, repeats: int, timeout: float, keys: list[str]) -> dict:
    """Run a job ``repeats`` times in fresh workers; medians of ``keys``, the first run's extras."""
    runs = []
    for _ in range(repeats):
        result = runner.run(job, timeout)
        if result["status"] != "ok":
            return result
        runs.append(result)
    out = dict(runs[0])
    for key in keys:
        out[key] = median([r.get(key) for r in runs])
    if repeats > 1:
        out["runs"] = [{k: rounded(r.get(k)) for k in keys} for r in runs]
    return out


def is_ok(entry) -> bool:
    return entry is not None and entry.get("status") == "ok"


def estimate_per_example(entries: dict, method: str, ks: list[int], n_train: int,
                          n_checkpoints: int) -> float | None:
    """Per-example seconds of ``method`` guessed as its grouped attribution time at the largest
    K plus what going per-example added for Grad-Dot (the per-example gradient pass)."""
    k = max(ks)
    grouped = entries.get((method, "grad-kmeans", k))
    dot_group = entries.get(("grad-dot", "grad-kmeans", k))
    dot_example = entries.get(("grad-dot", "per-example", n_train))
    if method == "grad-dot" or not (is_ok(grouped) and is_ok(dot_group) and is_ok(dot_example)):
        return None
    views = n_checkpoints if method == "tracin" else 1  # TracIn repeats the pass per checkpoint
    overhead = max(0.0, dot_example["attribution_seconds"] - dot_group["attribution_seconds"])
    return grouped["attribution_seconds"] + views * overhead


def add_measurement_args(parser: argparse.ArgumentParser, max_seconds: float) -> None:
    """The options every timing benchmark takes."""
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="fresh workers per measurement; medians reported")
    parser.add_argument("--max-seconds", type=float, default=max_seconds,
                        help=f"cap per measurement (default {max_seconds:g})")
    parser.add_argument("--work-dir", default=None, help="keep the model, groupings and worker logs here")
    parser.add_argument("--retries", type=int, default=0,
                        help="re-run a measurement up to this many times while other processes "
                             f"took > {round(CONTENDED * 100)}%% of the CPUs during it (default 0)")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before each measurement (and retry), wait up to this many seconds "
                             "for other processes to go idle (default 0)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="time cold calls (by default each worker first runs the method on 64 points)")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)


def run_if_worker(args, worker) -> bool:
    """In a worker (``--single SPEC``): run the measurement, print its JSON line, return True."""
    if args.single is None:
        return False
    print(json.dumps(worker(json.loads(args.single))), flush=True)
    return True


def method_names(text: str | None, registered) -> list[str] | None:
    """The comma list (all registered methods when empty), or None after logging unknown names."""
    names = [m.strip() for m in text.split(",") if m.strip()] if text else list(registered)
    unknown = [m for m in names if m not in registered]
    if unknown:
        log(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(registered)}")
        return None
    return names


def work_directory(args, prefix: str):
    """(folder, temporary): --work-dir (created), else a temporary folder to clean up at the end."""
    if args.work_dir:
        work_dir = Path(args.work_dir).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        return work_dir, None
    temporary = tempfile.TemporaryDirectory(prefix=prefix)
    return Path(temporary.name), temporary


def check_measurement_args(parser: argparse.ArgumentParser, args) -> None:
    if args.threads < 1 or args.repeats < 1 or args.max_seconds <= 0 or args.retries < 0 or args.quiet_wait < 0:
        parser.error("--threads and --repeats must be >= 1, --max-seconds > 0, --retries and --quiet-wait >= 0")


def time_reruns(app, repeats: int) -> dict:
    """Median and max seconds of ``repeats`` script runs of a Streamlit ``AppTest`` (each must
    end without an exception)."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        app.run()
        samples.append(time.perf_counter() - started)
        assert not app.exception, app.exception
    return {"median_s": round(statistics.median(samples), 3), "max_s": round(max(samples), 3)}
