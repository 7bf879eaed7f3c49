"""Ray executor benchmark, printing one JSON object to stdout; progress goes to stderr.

Setting: ``data.make_synthetic`` with N training points (default 100k), 64 features, 10
classes; an MLP 64-256-256-10 (85k parameters) trained one epoch (attribution cost does not depend on how well it
fits); K random groups (default 1000); Grad-Dot on the first 200 test points. Measured:

- ``local``: ``fit`` + ``attribute`` in this process at ``--threads`` torch threads (and at
  1 thread for reference), ``--repeats`` times, medians. The method is refitted each time so
  no repeat reuses the training side kept in memory.
- ``ray``: the same through :class:`RayExecutor` on a local Ray with ``--workers`` CPUs (one
  torch thread per task: Ray sets OMP_NUM_THREADS=1). ``ray_start_seconds`` is ``ray.init``;
  ``first_call_seconds`` the first attribution, whose first wave also starts the worker
  processes (Python, torch and this package imported in each); ``warm_seconds`` the median of
  the later ones. ``fixed_overhead_seconds`` = start + (first call - warm).
- ``broadcast_bytes``: what the driver puts in the object store once per run (training data
  and group labels, the view's model weights, the transformed test side).
- ``per_shard``: the cost of one shard of ``K / shards`` groups, computed in this process at
  one thread by the very function a task runs (:func:`score_group_range`), median over
  shards. ``projected_seconds`` gives the training side on W workers on paper:
  ``driver_seconds + all shards' seconds / W + shards_per_cpu x per_wave_overhead``, with the
  driver's own part (fit, test gradients) and the per-wave overhead (scheduling, rebuilding the
  module, results) measured on this run.

Threads are pinned (``torch.set_num_threads``); on a shared machine other processes inflate
every figure, so the load average is recorded.

Usage: python benchmarks/ray_executor.py [--n-train 100000] [--groups 1000] [--workers 2]
       [--threads 2] [--repeats 3] [--shards-per-cpu 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=100_000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the local executor")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards-per-cpu", type=int, default=4)
    parser.add_argument("--hidden", default="256,256", help="MLP hidden sizes (default 256,256: 85k parameters)")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private Ray on 127.0.0.1
    import ray

    from gda_core.attribution.executors import RayExecutor, TrainingData, score_group_range, shard_ranges
    from gda_core.attribution.grouping import make_grouping
    from gda_core.attribution.methods import make_method
    from gda_core.inputs.datasets import make_synthetic
    from gda_core.inputs.zoo import TrainConfig, model_config_for, train_model

    torch.set_num_threads(args.threads)
    split = make_synthetic(args.n_train + 2000, 64, 10, n_test=2000, seed=0)
    train, test = split.train, split.test.subset(slice(0, args.n_test))
    hidden = tuple(int(h) for h in args.hidden.split(","))
    model = train_model(model_config_for("mlp", train, hidden=hidden), train,
                        TrainConfig(epochs=1, lr=3e-3, batch_size=512, seed=0, n_checkpoints=1))
    groups = make_grouping("random", args.groups, seed=0).fit(train)
    parameters = sum(p.numel() for p in model.module.parameters())
    log(f"N={len(train)} K={groups.n_groups} P={parameters} n_test={len(test)}")

    def attribute(executor=None) -> tuple[float, np.ndarray]:
        method = make_method("grad-dot", model)
        return timed(lambda: method.fit(train, groups).attribute(test, executor=executor))

    local_runs, reference = [], None
    for threads in sorted({args.threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        times = []
        for repeat in range(args.repeats):
            seconds, scores = attribute()
            times.append(seconds)
            reference = scores if reference is None else reference
            log(f"local {threads} thread(s) #{repeat}: {seconds:.2f} s")
        local_runs.append({"threads": threads, "seconds": times, "median_seconds": statistics.median(times)})
    torch.set_num_threads(args.threads)
    # The driver's own part of a sharded run: fit and the test side.
    driver_seconds, _ = timed(lambda: make_method("grad-dot", model).fit(train, groups)
                              .views_[0].engine.test_gradients(test))

    temp_dir = tempfile.mkdtemp(prefix="gdabench", dir="/tmp")
    ray_start, _ = timed(lambda: ray.init(address="local", num_cpus=args.workers, include_dashboard=False,
                                          _temp_dir=temp_dir, _node_ip_address="127.0.0.1",
                                          logging_level="warning"))
    log(f"ray.init {ray_start:.2f} s")
    executor = RayExecutor(shards_per_cpu=args.shards_per_cpu)
    ray_times, max_error = [], 0.0
    for repeat in range(args.repeats + 1):
        seconds, scores = attribute(executor)
        ray_times.append(seconds)
        max_error = max(max_error, float(np.abs(scores - reference).max() / np.abs(reference).max()))
        log(f"ray {args.workers} worker(s) #{repeat}: {seconds:.2f} s")
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)

    # One shard's cost at one thread, by the function a Ray task runs.
    torch.set_num_threads(1)
    method = make_method("grad-dot", model).fit(train, groups)
    view = method.views_[0]
    test_side = view.engine.test_gradients(test).numpy()
    data, recipe = TrainingData.of(train, groups), method._view_recipe(0, view)
    shards = shard_ranges(groups.sizes, args.shards_per_cpu * args.workers)
    shard_times = [timed(lambda a=a, b=b: score_group_range(data, recipe, test_side, a, b))[0] for a, b in shards]
    shard_seconds = statistics.median(shard_times)

    local_best = min(run["median_seconds"] for run in local_runs)
    local_pinned = next(run for run in local_runs if run["threads"] == args.threads)["median_seconds"]
    warm = statistics.median(ray_times[1:])
    waves = math.ceil(len(shards) / args.workers)
    work = sum(shard_times)  # the whole training side at one thread
    # What the warm run spends beyond the driver's part and the shards' compute, per wave.
    per_wave_overhead = max(0.0, (warm - driver_seconds - waves * shard_seconds) / waves)
    report = {
        "setting": {"n_train": len(train), "n_test": len(test), "n_groups": groups.n_groups, "parameters": parameters,
                    "method": "grad-dot", "model": f"mlp 64-{'-'.join(map(str, hidden))}-10", "local_threads": args.threads,
                    "ray_workers": args.workers, "threads_per_ray_task": 1, "repeats": args.repeats,
                    "shards": len(shards), "groups_per_shard": groups.n_groups / len(shards),
                    "cpu_count": os.cpu_count(), "load_average": os.getloadavg()},
        "local": local_runs,
        "ray": {"ray_start_seconds": ray_start, "first_call_seconds": ray_times[0], "warm_seconds": ray_times[1:],
                "warm_median_seconds": warm,
                "fixed_overhead_seconds": ray_start + max(0.0, ray_times[0] - warm),
                "max_relative_difference_from_local": max_error},
        "speedup_warm_vs_local_pinned": local_pinned / warm,
        "speedup_warm_vs_local_best": local_best / warm,
        "speedup_including_start_vs_local_pinned": local_pinned / (ray_start + ray_times[0]),
        "broadcast_bytes": executor.broadcast_bytes,
        "per_shard": {"seconds_median": shard_seconds, "seconds": shard_times,
                      "driver_seconds": driver_seconds, "per_wave_overhead_seconds": per_wave_overhead},
        "projected_seconds": {
            str(w): driver_seconds + work / w + args.shards_per_cpu * per_wave_overhead for w in (1, 2, 4, 8, 16, 32)},
        "projected_speedup_vs_local_pinned": {
            str(w): local_pinned / (driver_seconds + work / w + args.shards_per_cpu * per_wave_overhead)
            for w in (1, 2, 4, 8, 16, 32)},
        "projection_note": "warm run on W one-thread workers with shards_per_cpu x W shards: driver part + "
                           "all shards' compute / W + shards_per_cpu waves of the measured per-wave overhead "
                           "(data already on the nodes, workers started)",
        "torch": torch.__version__, "ray_version": ray.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
