"""Text benchmark: the built-in text demo (minilm fine-tuned on reviews), printing one JSON object.

- the demo's fine-tune time (head and last encoder layer, on first use; with ``--cache`` of an
  earlier run, the cached load);
- per-example against grouped (repr-kmeans, K = N/100) time for grad-dot, trak, if-arnoldi and
  if-ekfac on the head-plus-last-layer subset (``--parameters last-1``), and the agreement of
  the grouped scores with the per-example scores summed over each group. The grouping's
  features (the pooled sentence embeddings) go through the method's frozen prefix, so the five
  frozen encoder layers run once per run, for the grouping and the method together;
- ``--lds N`` (the gold standard the issue asks for): N models retrained on random halves of the
  training points (the demo's fine-tuned part, the last layer and the head, retrained with the
  demo's recipe from the pretrained encoder and a fresh head seeded per model, on the frozen
  layers' output computed once: ``gda_core.evaluation.gold.point_lds_ensemble``), and N on
  random halves of the grouping's groups; point-level LDS of every run (a group's score
  shared equally by its members) and group-level LDS of the grouped runs beside the group
  sizes, each with its standard error over test points. Both ensembles are kept in the
  store under ``--cache`` and reused by a later run with the same cache;
- ``--steps T`` (0 skips it) further-training cosine: from the fine-tuned weights, T more AdamW
  steps on the last layer and head with one group up-weighted by 1 + epsilon, minus the same
  seed's unweighted run, divided by epsilon, averaged over ``--seeds``; cosine per test point
  between that change of the test loss (negated, so that positive means the group helped) and
  each grouped run's scores, mean over test points;
- with and without the frozen prefix (``--without-prefix``, empty by default; e.g. grad-dot):
  the five frozen encoder layers run once per data set, or the whole BERT for every gradient;
- ``--factored-vs-vmap grad-dot``: the per-example run on the factored path (the last layer's
  Linear and LayerNorm factors) against the ``vmap`` path, alternating twice in one process.

Usage: python benchmarks/text.py [--threads 1] [--test-size 60] [--lds 50] [--steps 15] [--seeds 3]
       [--cache DIR] [--methods grad-dot,trak,...] [--without-prefix grad-dot] [--factored-vs-vmap grad-dot]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gda_core import AttributionRequest, run_attribution  # noqa: E402
from gda_core.attribution.grouping import make_grouping  # noqa: E402
from gda_core.attribution.methods import make_method  # noqa: E402
from gda_core.evaluation.gold import compute_gold, compute_point_lds, lds, point_lds  # noqa: E402
from gda_core.inputs.choices import builtin_model_is_cached, load_data_choice, load_inputs  # noqa: E402
from gda_core.inputs.huggingface import DEMO_RECIPE, last_layer_split  # noqa: E402
from gda_core.requests import GoldConfig  # noqa: E402
from gda_core.runs.store import ScoreStore  # noqa: E402

#: options that keep each method within minutes on a CPU (the curvature sample passes the whole BERT)
METHODS = {"grad-dot": {}, "trak": {"curvature_samples": 256}, "if-ekfac": {"curvature_samples": 256},
           "if-arnoldi": {"curvature_samples": 64, "rank": 16, "iterations": 20}}


def further_training(model, split, groups, *, steps: int, seeds: int, epsilon: float, test_size: int) -> np.ndarray:
    """(n_test, K): minus the change of each test loss per unit up-weighting of each group."""
    module = model.module
    train_ids, test_ids = split.train.features, split.test.features[:test_size]
    frozen, suffix = last_layer_split(module, train_ids)
    test_frozen, _ = last_layer_split(module, test_ids)
    labels, test_labels = split.train.labels, split.test.labels[:test_size]
    chosen = set(module.parameter_subset(DEMO_RECIPE["parameters"]))
    named = {n: p for n, p in module.named_parameters() if n in chosen}
    start = {n: p.detach().clone() for n, p in named.items()}
    n_groups = int(groups.max()) + 1

    def run(weights: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.no_grad():
            for name, parameter in named.items():
                parameter.copy_(start[name])
        for parameter in named.values():
            parameter.requires_grad_(True)
        optimiser = torch.optim.AdamW(list(named.values()), lr=DEMO_RECIPE["layer_lr"])
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            rows = torch.randperm(len(labels), generator=generator)[:DEMO_RECIPE["batch_size"]]
            optimiser.zero_grad()
            losses = torch.nn.functional.cross_entropy(suffix(frozen[rows]),
                                                       labels[rows], reduction="none")
            (losses * weights[rows]).mean().backward()
            optimiser.step()
        for parameter in named.values():
            parameter.requires_grad_(False)
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(suffix(test_frozen), test_labels,
                                                     reduction="none")

    effect = np.zeros((len(test_labels), n_groups))
    for seed in range(seeds):
        base = run(torch.ones(len(labels)), seed)
        for group in range(n_groups):
            weights = torch.ones(len(labels))
            weights[torch.as_tensor(groups == group)] += epsilon
            effect[:, group] += -(run(weights, seed) - base).numpy() / epsilon / seeds
    with torch.no_grad():  # leave the model as it was
        for name, parameter in named.items():
            parameter.copy_(start[name])
    return effect


def cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)))


def factored_against_vmap(method: str, *, test_size: int, cache: Path, repeats: int = 2) -> dict:
    """Per-example ``method`` with the factored per-example path (the default: the last
    layer's Linear and LayerNorm factors) against the ``vmap`` path (the factored engine
    swapped for one that refuses), alternating, in this process."""
    from gda_core.attribution.factored import FactoredEngine
    from gda_core.attribution.methods import base

    class VmapOnly(FactoredEngine):
        def _refusal(self) -> str:
            return "the factored path switched off (benchmark reference)"

    out: dict = {"vmap": [], "factored": []}
    scores = {}
    try:
        for _ in range(repeats):
            for label, engine in (("vmap", VmapOnly), ("factored", FactoredEngine)):
                base.FactoredEngine = engine
                result = run_attribution(AttributionRequest(
                    data="reviews", model="minilm", method=method, grouping="per-example", test_size=test_size,
                    method_options={"parameters": "last-1", **METHODS.get(method, {})}), cache_dir=cache)
                out[label].append(round(result.timings["grouping"] + result.timings["fit"]
                                        + result.timings["attribute"], 2))
                out[f"{label}_train_side"] = result.method_info["gradient_path"]["train_side"][:80]
                scores[label] = result.scores
    finally:
        base.FactoredEngine = FactoredEngine
    out["speed_up"] = [round(v / f, 2) for v, f in zip(out["vmap"], out["factored"])]
    out["max_relative_difference"] = float(np.abs(scores["factored"] - scores["vmap"]).max()
                                           / max(np.abs(scores["vmap"]).max(), 1e-30))
    return out


def lds_ensembles(model, split, groups, *, n_subsets: int, test_size: int, cache: Path) -> tuple:
    """The point-level ensemble (subsets of points) and the grouping's group-level one, from
    the store under ``cache`` when an earlier run computed them; and their seconds."""
    store = ScoreStore(cache)
    config = GoldConfig(kind="lds", n_subsets=n_subsets, alpha=0.5)
    test = split.test.subset(slice(0, test_size))
    seconds = {}
    started = time.perf_counter()
    point = compute_point_lds(config, model, split.train, test, store, lambda phase, fraction: None)
    seconds["point_level"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    grouped = compute_gold(config, model, split.train, test, groups, store, lambda phase, fraction: None)
    seconds["group_level"] = round(time.perf_counter() - started, 1)
    return point, grouped, seconds


def lds_figures(scores: np.ndarray, groups, point, grouped=None) -> dict:
    figures = point_lds(scores, groups, point)
    out = {"point_lds": round(figures["lds"], 4), "point_lds_se": round(figures["lds_se"], 4)}
    if grouped is not None:
        figures = lds(scores, grouped)
        out.update(group_lds=round(figures["lds"], 4), group_lds_se=round(figures["lds_se"], 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-size", type=int, default=60)
    parser.add_argument("--lds", type=int, default=0, metavar="N",
                        help="LDS on N retrained subsets of points and N of groups (0: not run)")
    parser.add_argument("--steps", type=int, default=15, help="further-training steps (0: not run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--without-prefix", default="",
                        help="methods also run with frozen_prefix=false (the whole BERT for every gradient)")
    parser.add_argument("--factored-vs-vmap", default="",
                        help="methods also timed per example on the vmap path against the factored one (e.g. grad-dot)")
    parser.add_argument("--cache", default=None, help="cache folder (default: a fresh temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache or tempfile.mkdtemp(prefix="gda-text-"))
    out: dict = {"data": "reviews", "model": "minilm", "parameters": "last-1", "threads": args.threads,
                 "method_options": {m: METHODS.get(m, {}) for m in args.methods.split(",") if m},
                 "test_size": args.test_size}

    started = time.perf_counter()
    request = AttributionRequest(data="reviews", model="minilm", method="grad-dot", grouping="per-example")
    out["model_was_cached"] = builtin_model_is_cached("minilm", load_data_choice("reviews").train, cache)
    split, model = load_inputs(request, cache)
    # encoder unpacked, fine-tuned, saved, loaded (only the load where --cache held the model)
    out["first_use_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    split, model = load_inputs(request, cache)
    out["cached_load_seconds"] = round(time.perf_counter() - started, 1)
    from gda_core.inputs.zoo import model_score

    out["test_accuracy"] = round(model_score(model.module, split.test), 3)
    out["train_accuracy"] = round(model_score(model.module, split.train), 3)
    out["n_train"], out["tokens"] = len(split.train), int(split.train.features.shape[1])
    n_groups = max(2, len(split.train) // 100)
    out["n_groups"] = n_groups
    # The grouping as every grouped run makes it (through the methods' frozen prefix at last-1).
    engine = make_method("grad-dot", model, parameters="last-1").engine()
    partition = make_grouping("repr-kmeans", n_groups, seed=0).fit(split.train, model.module, engine=engine)
    groups = partition.labels
    out["group_sizes"] = partition.size_summary()
    del engine
    if args.lds:
        point_gold, group_gold, seconds = lds_ensembles(model, split, partition, n_subsets=args.lds,
                                                        test_size=args.test_size, cache=cache)
        out["lds_gold"] = {"n_subsets": args.lds, "alpha": 0.5, "seconds": seconds,
                           "recipe": point_gold.params.get("recipe"),
                           "mean_test_loss_of_subset_models": round(float(point_gold.outputs.mean()), 4)}
        print(json.dumps({"lds_gold": out["lds_gold"]}), file=sys.stderr)

    rows = {}
    grouped_scores = {}
    uncached = [m for m in args.without_prefix.split(",") if m]
    for method in [m for m in args.methods.split(",") if m]:
        row = {}
        for grouping, k in (("per-example", None), ("repr-kmeans", n_groups)):
            options = {"parameters": "last-1", **METHODS.get(method, {})}
            result = run_attribution(AttributionRequest(
                data="reviews", model="minilm", method=method, grouping=grouping, n_groups=k,
                test_size=args.test_size, method_options=options), cache_dir=cache)
            row[grouping] = {"seconds": round(result.timings["grouping"] + result.timings["fit"]
                                              + result.timings["attribute"], 2),
                             "timings": {k: round(v, 2) for k, v in result.timings.items()}}
            if method in uncached:  # the whole BERT for every gradient: the same scores, slower
                plain = run_attribution(AttributionRequest(
                    data="reviews", model="minilm", method=method, grouping=grouping, n_groups=k,
                    test_size=args.test_size, method_options={**options, "frozen_prefix": False}), cache_dir=cache)
                row[grouping]["without_frozen_prefix"] = {
                    "seconds": round(plain.timings["grouping"] + plain.timings["fit"] + plain.timings["attribute"], 2),
                    "max_relative_difference": float(np.abs(plain.scores - result.scores).max()
                                                     / max(np.abs(result.scores).max(), 1e-30))}
                row[grouping]["frozen_prefix_speed_up"] = round(
                    row[grouping]["without_frozen_prefix"]["seconds"] / max(row[grouping]["seconds"], 1e-9), 2)
            path = result.method_info.get("gradient_path", {})
            row[grouping]["gradient_path"] = {key: path.get(key) for key in ("train_side", "frozen_prefix")}
            projection = (result.method_info.get("solver_info") or [{}])[0].get("projection")
            if projection:
                row[grouping]["projection"] = projection
            if args.lds:
                row[grouping]["lds"] = lds_figures(result.scores, result.groups, point_gold,
                                                   None if grouping == "per-example" else group_gold)
            if grouping == "per-example":
                per_example = result.scores
            else:
                grouped_scores[method] = result.scores
                summed = np.stack([per_example[:, result.groups.labels == g].sum(1) for g in range(k)], axis=1)
                row["cosine_grouped_vs_summed_per_example"] = round(cosine_rows(result.scores, summed), 4)
                row["speed_up"] = round(row["per-example"]["seconds"] / max(row[grouping]["seconds"], 1e-9), 2)
                np.testing.assert_array_equal(result.groups.labels, groups)
        row["attributed_parameters"] = result.method_info["attributed_parameters"]
        rows[method] = row
        print(json.dumps({method: row}), file=sys.stderr)
    out["methods"] = rows
    if args.factored_vs_vmap:
        out["factored_vs_vmap"] = {method: factored_against_vmap(method, test_size=args.test_size, cache=cache)
                                   for method in args.factored_vs_vmap.split(",")}

    if args.steps:
        started = time.perf_counter()
        gold = further_training(model, split, groups, steps=args.steps, seeds=args.seeds, epsilon=args.epsilon,
                                test_size=args.test_size)
        out["further_training"] = {"steps": args.steps, "seeds": args.seeds, "epsilon": args.epsilon,
                                   "seconds": round(time.perf_counter() - started, 1)}
        out["further_training"]["cosine"] = {method: round(cosine_rows(scores, gold), 3)
                                             for method, scores in grouped_scores.items()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
