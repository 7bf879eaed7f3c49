"""K-FAC / EK-FAC against kronfluence's, printing one JSON object (kronfluence is not a
dependency: run this with a Python that has it, e.g. a separate virtual environment).

digits with the MLP of ``benchmarks/kfac.py`` (64 -> 32 -> 16 -> 10, the demo recipe): the
per-example scores of 50 test points from kronfluence's EK-FAC and K-FAC (its defaults:
labels sampled from the softmax, factors over all 1438 training points) at the damping
if-exact picks, against GDA's if-ekfac / if-kfac (the exact GGN expectation, no sampling)
and if-exact: per-test-point Spearman, the ratio of score magnitudes, and the seconds of a
fit plus scores (GDA's with the factor cache off). One torch thread.

Usage: python benchmarks/kfac_peers.py [--test-size 50]
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

from gda_core.attribution.grouping import make_grouping  # noqa: E402
from gda_core.attribution.methods import make_method  # noqa: E402
from gda_core.evaluation.statistics import spearman  # noqa: E402
from gda_core.inputs.datasets import load_builtin  # noqa: E402
from gda_core.inputs.zoo import default_train_config, model_config_for, train_model  # noqa: E402


def _kronfluence_scores(module: torch.nn.Module, train, test, strategy: str, damping: float) -> np.ndarray:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class CrossEntropy(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:  # kronfluence's true Fisher: labels drawn from the model's softmax
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            return torch.nn.functional.cross_entropy(model(inputs), labels, reduction="sum")

    class Rows(torch.utils.data.Dataset):
        def __init__(self, data):
            self.features, self.labels = data.features.float(), data.labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            return self.features[index], self.labels[index]

    task = CrossEntropy()
    analyzer = Analyzer(analysis_name="digits", model=prepare_model(module, task), task=task, cpu=True,
                        output_dir=tempfile.mkdtemp(), disable_tqdm=True)
    analyzer.fit_all_factors(factors_name=strategy, dataset=Rows(train), per_device_batch_size=256,
                             factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)
    analyzer.compute_pairwise_scores(scores_name=strategy, factors_name=strategy, query_dataset=Rows(test),
                                     train_dataset=Rows(train), per_device_query_batch_size=len(test),
                                     per_device_train_batch_size=256,
                                     score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True)
    return analyzer.load_pairwise_scores(strategy)["all_modules"].double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-size", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "kronfluence is not installed in this Python"}))
        return
    split = load_builtin("digits", seed=0)
    train, test = split.train, split.test.subset(slice(0, args.test_size))
    model = train_model(model_config_for("mlp", train, hidden=(32, 16)), train, default_train_config("mlp"))
    groups = make_grouping("per-example").fit(train)
    ours, seconds = {}, {}
    damping = None  # if-exact's default, then the same for the others
    for name in ("if-exact", "if-ekfac", "if-kfac"):
        started = time.perf_counter()
        options = {"curvature_samples": None, "damping": damping}
        if name != "if-exact":
            options["cache_factors"] = False
        method = make_method(name, model, **options).fit(train, groups)
        ours[name] = method.attribute(test)
        seconds[name] = round(time.perf_counter() - started, 2)
        damping = method.damping_[0]
    result: dict = {"data": "digits", "model": "mlp (32, 16)", "n_train": len(train), "n_test": len(test),
                    "damping": damping, "gda_seconds": seconds, "torch_threads": 1}
    model.module.eval()
    for strategy in ("ekfac", "kfac"):
        started = time.perf_counter()
        theirs = _kronfluence_scores(model.module, train, test, strategy, damping)
        result[f"kronfluence-{strategy}"] = {
            "seconds": round(time.perf_counter() - started, 2),
            "spearman_vs_if-exact": round(float(spearman(theirs.T, ours["if-exact"].T, axis=0).mean()), 4),
            f"spearman_vs_if-{strategy}": round(float(spearman(theirs.T, ours[f"if-{strategy}"].T, axis=0).mean()), 4),
            f"median_abs_ratio_to_if-{strategy}": round(float(np.median(np.abs(theirs)) /
                                                             np.median(np.abs(ours[f"if-{strategy}"]))), 4),
        }
    for name in ("if-ekfac", "if-kfac"):
        rho = spearman(ours[name].T, ours["if-exact"].T, axis=0)
        result[f"{name}_spearman_vs_if-exact"] = round(float(rho.mean()), 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
