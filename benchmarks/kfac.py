"""K-FAC / EK-FAC benchmark, printing one JSON object: time and LDS against retrained subsets.

digits with an MLP (64 -> 32 -> 16 -> 10, 2778 parameters, small enough for if-exact; the
demo recipe, saved as a model file; 1438 train): if-ekfac,
if-kfac, if-arnoldi, if-exact and grad-dot on random groups (K = 30, 150) and per example,
scored through the sweep by point-level LDS (models retrained from scratch on random halves of
the points, each point its group's equal share: :func:`gda_core.evaluation.gold.point_lds`),
with the group-level LDS beside it. Factors are
refitted in every cell (``cache_factors`` off) so the times are whole fits; the time of a fit
that reuses cached factors is reported beside them. Also the per-test-point Spearman of each
method's per-example scores against if-exact's (at the same damping), and of if-exact's GGN cut
to its per-layer blocks (the most a layer-wise curvature can agree). One torch thread
unless --threads says otherwise.

Usage: python benchmarks/kfac.py [--threads 1] [--subsets 50] [--test-size 50] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gda_core.attribution.grads import GradientEngine  # noqa: E402
from gda_core.attribution.grouping import make_grouping  # noqa: E402
from gda_core.attribution.methods import make_method  # noqa: E402
from gda_core.evaluation.gold import compute_point_lds, lds  # noqa: E402
from gda_core.evaluation.statistics import spearman  # noqa: E402
from gda_core.evaluation.sweeps import run_sweep  # noqa: E402
from gda_core.inputs.choices import load_inputs  # noqa: E402
from gda_core.inputs.datasets import load_builtin  # noqa: E402
from gda_core.inputs.zoo import default_train_config, model_config_for, save_model, train_model  # noqa: E402
from gda_core.progress import no_progress  # noqa: E402
from gda_core.requests import GoldConfig, SweepConfig  # noqa: E402
from gda_core.runs.store import ScoreStore  # noqa: E402

HIDDEN = (32, 16)
METHODS = ("if-ekfac", "if-kfac", "if-arnoldi", "if-exact", "grad-dot")


def _agreement(config: SweepConfig, root: Path) -> dict:
    """Per-example scores of each influence method against if-exact's, at if-exact's damping;
    and the fit time of K-FAC / EK-FAC when their factors are computed and when reused."""
    split, model = load_inputs(config, root, "cpu")
    train, test = split.train, split.test.subset(slice(0, config.test_size))
    groups = make_grouping("per-example").fit(train)
    exact = make_method("if-exact", model).fit(train, groups)
    reference = exact.attribute(test)
    out = {"damping": exact.damping_[0]}
    for name in ("if-ekfac", "if-kfac", "if-arnoldi", "grad-dot"):
        options = {} if name == "grad-dot" else {"damping": exact.damping_[0]}
        scores = make_method(name, model, **options).fit(train, groups).attribute(test)
        rho = spearman(scores.T, reference.T, axis=0)
        out[name] = {"spearman_vs_exact_mean": round(float(np.mean(rho)), 4),
                     "spearman_vs_exact_min": round(float(np.min(rho)), 4)}
    blocks = _layer_block_scores(exact, model.module, train, test)
    rho = spearman(blocks.T, reference.T, axis=0)
    gold = compute_point_lds(config.gold, model, train, test, ScoreStore(root), no_progress)
    out["exact GGN, per-layer blocks"] = {"spearman_vs_exact_mean": round(float(np.mean(rho)), 4),
                                          "spearman_vs_exact_min": round(float(np.min(rho)), 4),
                                          "point_lds": round(lds(blocks, gold)["lds"], 4)}
    for name in ("if-kfac", "if-ekfac"):
        fits = {}
        for cache in (False, True):  # a whole fit, then one that loads the factors cached above
            method = make_method(name, model, cache_factors=cache).fit(train, groups)
            fits[method.solver_info_[0]["factor_cache"]] = round(method.fit_seconds_, 3)
        out[name]["fit_seconds"] = fits
    return out


def _layer_block_scores(exact, module: torch.nn.Module, train, test) -> np.ndarray:
    """Influence with if-exact's GGN cut to its per-layer blocks (each module's parameters
    together) at if-exact's damping: what a layer-wise curvature (K-FAC, EK-FAC) would reach
    with each layer's block exact, so the gap to if-exact is the cross-layer part and the rest
    the Kronecker factorisation's."""
    values, vectors = exact.eigen_[0]
    ggn = ((vectors * values) @ vectors.T).double()
    owners = np.concatenate([[name.rsplit(".", 1)[0]] * parameter.numel()
                             for name, parameter in module.named_parameters() if parameter.requires_grad])
    blocks = ggn * torch.as_tensor(owners[:, None] == owners[None, :])
    engine = GradientEngine(module)
    test_gradients, train_gradients = engine.test_gradients(test).double(), engine.test_gradients(train).double()
    damped = blocks + exact.damping_[0] * torch.eye(len(blocks), dtype=torch.float64)
    return (test_gradients @ torch.linalg.solve(damped, train_gradients.T)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subsets", type=int, default=50)
    parser.add_argument("--test-size", type=int, default=50)
    parser.add_argument("--cache", default=None, help="run store folder (default: a fresh temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.cache or scratch)
        os.environ["GDA_CACHE_DIR"] = str(root)  # the factor cache lives in the same folder
        train = load_builtin("digits", seed=0).train
        model = train_model(model_config_for("mlp", train, hidden=HIDDEN), train, default_train_config("mlp"))
        path = save_model(model, root / "models" / "digits-mlp-32-16") / "model.safetensors"
        result = _run(args, str(path), root)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


def _run(args: argparse.Namespace, model: str, root: Path) -> dict:
    config = SweepConfig(data="digits", model=model, methods=METHODS, groupings=("random",), group_counts=(30, 150),
                         per_example=True, test_size=args.test_size,
                         method_options={"if-kfac": {"cache_factors": False}, "if-ekfac": {"cache_factors": False}},
                         gold=GoldConfig(kind="lds", n_subsets=args.subsets), device="cpu")
    sweep = run_sweep(config, ScoreStore(root))
    agreement = _agreement(config, root)
    table: dict[str, dict] = {}
    for point in sweep["points"]:
        row = table.setdefault(f"{point['grouping']}/K={point['n_groups']}", {})
        row[point["method"]] = {key: round(point[key], 4) for key in ("point_lds", "point_lds_se", "group_lds")}
        row[point["method"]]["seconds"] = round(point["seconds"], 3)
    gold = ("point-level LDS (retrained from scratch on random halves of the points, each point its group's equal "
            "share); group_lds beside it (random halves of the groups)")
    return {
        "data": "digits", "model": f"mlp {HIDDEN}", "n_train": sweep["n_train"], "n_test": sweep["n_test"],
        "gold": gold, "lds_subsets": args.subsets,
        "torch_threads": torch.get_num_threads(), "lds": table, "gold_seconds": sweep["gold_seconds"],
        "per_example_agreement_with_if_exact": agreement,
    }


if __name__ == "__main__":
    main()
