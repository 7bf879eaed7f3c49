"""Side-by-side runs of our methods and the peers' (dattri, captum, traker) for speed.py --peers.

Both sides get the same trained model (a ReLU MLP 64-128-128-10 of the zoo, in eval mode), the
same checkpoints (TracIn, with their learning rates), the same training and test tensors, and
per-example scores of shape (n_test, N); each measurement runs in a fresh worker process after
a warm-up on 64 training and 2 test points (timed apart, as ``warmup_seconds``), so one-off
per-process costs are not counted in either side's time. Peers run with their documented
defaults (named in ``PEER_SETTINGS``), on this CPU. A peer that is not installed is skipped
with a note: none of them is a dependency of the project.

Settings: ``mlp18k`` (make_classification, 18000 training x 200 test points, as speed.py)
and ``digits`` (the built-in set), where each run is also scored by LDS against models
retrained on 50 random halves of the training points (gda_core.evaluation.gold).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

FAMILIES = ("grad-dot", "grad-cos", "tracin", "if-lissa", "trak", "if-arnoldi", "if-cg", "datainf")
#: the peers that implement each family
PEERS = {
    "grad-dot": ("dattri",), "grad-cos": ("dattri",), "tracin": ("dattri", "captum"),
    "if-lissa": ("dattri",), "trak": ("dattri", "traker"), "if-arnoldi": ("dattri",),
    "if-cg": ("dattri",), "datainf": ("dattri",),
}
PEER_SETTINGS = {
    "dattri": "dattri 0.3.0 defaults: TracInAttributor projects to 512 dims (its DEFAULT_PROJECTOR_KWARGS); "
              "IFAttributorLiSSA batch 1, depth 5000, scaling 50, damping 0; IFAttributorCG max_iter 10; "
              "IFAttributorArnoldi proj_dim 100, max_iter 100; IFAttributorDataInf; TRAKAttributor proj_dim 512; "
              "regularization 1e-3 for CG, Arnoldi and DataInf (the default 0 gives non-finite Arnoldi and "
              "DataInf scores), TRAK's 0",
    "captum": "captum 0.9.0 TracInCP over all layers, loss reduction 'none', batch 256",
    "traker": "traker 0.3.2 TRAKer, BasicProjector (CPU), proj_dim 2048 (its default), no half precision",
}
SETTINGS = ("mlp18k", "digits")
#: dattri's CG, Arnoldi and DataInf regularization (their default, 0, gives non-finite scores)
PEER_REGULARIZATION = 1e-3
HIDDEN = (128, 128)
N_CHECKPOINTS = 4
LDS_SUBSETS = 50


def available(peer: str) -> bool:
    return importlib.util.find_spec(peer if peer != "traker" else "trak") is not None


# --------------------------------------------------------------------------- data and model
def setting_data(name: str):
    """(train, test) for a setting, identical in every worker."""
    from gda_core.inputs.datasets import load_builtin, make_synthetic

    if name == "mlp18k":
        split = make_synthetic(n_samples=20000, n_features=64, n_classes=10, n_test=2000, seed=0)
        return split.train, split.test.subset(slice(0, 200))
    if name == "digits":
        split = load_builtin("digits", seed=0)
        return split.train, split.test
    raise ValueError(f"unknown setting {name!r}")


def prepare(spec: dict) -> dict:
    """Train the setting's model (saved for the workers) and, on digits, the LDS ensemble."""
    import numpy as np

    from gda_core.inputs.zoo import ModelConfig, TrainConfig, model_score, save_model, train_model

    train, test = setting_data(spec["setting"])
    config = ModelConfig(arch="mlp", n_features=train.features.shape[1], n_classes=10, hidden=HIDDEN,
                         activation="relu")
    trained = train_model(config, train, TrainConfig(epochs=spec["train_epochs"], lr=3e-3, batch_size=64,
                                                     optimizer="adam", seed=0, n_checkpoints=N_CHECKPOINTS))
    folder = Path(spec["work_dir"]) / spec["setting"]
    save_model(trained, folder / "model")
    out = {"n_train": len(train), "n_test": len(test), "test_accuracy": model_score(trained.module, test),
           "n_parameters": sum(p.numel() for p in trained.module.parameters())}
    if spec["setting"] == "digits":
        import time

        from gda_core.evaluation.gold import point_lds_ensemble

        started = time.perf_counter()
        ensemble = point_lds_ensemble(trained, train, test, n_subsets=LDS_SUBSETS, alpha=0.5)
        np.savez(folder / "lds.npz", masks=ensemble.masks, outputs=ensemble.outputs)
        out["lds_ensemble_seconds"] = time.perf_counter() - started
        out["lds_params"] = json.loads(json.dumps(ensemble.params, default=str))
    return out


# ----------------------------------------------------------------------------------- runners
def _ours(family: str, model, train, test):
    import numpy as np

    from gda_core.attribution.grouping import Groups
    from gda_core.attribution.methods import make_method

    def run(train_part, test_part):
        method = make_method(family, model).fit(train_part, Groups(np.arange(len(train_part)), len(train_part)))
        scores = method.attribute(test_part)
        info = {name.rstrip("_"): getattr(method, name) for name in ("damping_", "solver_info_", "gradient_path_")
                if hasattr(method, name)}
        return scores, info

    return run


def _loaders(train_part, test_part, batch: int = 256):
    from torch.utils.data import DataLoader, TensorDataset

    return (DataLoader(TensorDataset(train_part.features, train_part.labels), batch_size=batch, shuffle=False),
            DataLoader(TensorDataset(test_part.features, test_part.labels), batch_size=batch, shuffle=False))


def _dattri(family: str, model, train, test, lissa_depth: int | None = None):
    import torch
    from dattri.task import AttributionTask
    from torch import nn

    module = model.module

    def loss(params, data):
        x, y = data  # one example (TracIn, TRAK) or a batch (the influence attributors): the mean loss
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1).long()  # dattri's LiSSA hands labels as floats
        return nn.functional.cross_entropy(torch.func.functional_call(module, params, x), y)

    def correct_probability(params, data):
        return torch.exp(-loss(params, data))

    final = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def run(train_part, test_part):
        from dattri.algorithm import influence_function as dif
        from dattri.algorithm.tracin import TracInAttributor
        from dattri.algorithm.trak import TRAKAttributor

        if family == "tracin":
            states = [{k: v.clone() for k, v in c.state.items()} for c in model.checkpoints]
            weights = torch.tensor([c.lr for c in model.checkpoints])
        else:
            states, weights = [final], torch.tensor([1.0])
        task = AttributionTask(loss_func=loss, model=module, checkpoints=states if len(states) > 1 else states[0])
        if family in ("grad-dot", "grad-cos", "tracin"):
            attributor = TracInAttributor(task=task, weight_list=weights, normalized_grad=family == "grad-cos",
                                          device="cpu")
        elif family == "trak":
            attributor = TRAKAttributor(task=task, correct_probability_func=correct_probability, device="cpu")
        else:
            kind = {"if-lissa": dif.IFAttributorLiSSA, "if-cg": dif.IFAttributorCG,
                    "if-arnoldi": dif.IFAttributorArnoldi, "datainf": dif.IFAttributorDataInf}[family]
            # regularization: dattri's default 0 gives non-finite Arnoldi and DataInf scores here
            extra = {"regularization": PEER_REGULARIZATION}
            if family == "if-lissa":  # its defaults, but for a shorter recursion where asked (--peer-lissa-depth)
                extra = {"recursion_depth": lissa_depth} if lissa_depth else {}
            attributor = kind(task=task, device="cpu", **extra)
        train_loader, test_loader = _loaders(train_part, test_part)
        if family in ("grad-dot", "grad-cos", "tracin"):
            attributor.cache()
        else:
            attributor.cache(train_loader)
        scores = attributor.attribute(test_loader) if family == "trak" \
            else attributor.attribute(train_loader, test_loader)
        module.load_state_dict(final)  # dattri loads the checkpoints into the module
        return scores.T.detach().cpu().numpy(), {}

    return run


def _captum(family: str, model, train, test):
    import torch
    from captum.influence import TracInCP
    from torch import nn
    from torch.utils.data import TensorDataset

    folder = Path(tempfile.mkdtemp(prefix="captum-ckpt-"))
    paths = []
    for index, checkpoint in enumerate(model.checkpoints):
        path = folder / f"{index}.pt"
        torch.save({"state": checkpoint.state, "lr": checkpoint.lr}, path)
        paths.append(str(path))

    def load(net, path):
        saved = torch.load(path, weights_only=True)
        net.load_state_dict(saved["state"])
        return saved["lr"]

    def run(train_part, test_part):
        net = model.checkpoint_module(model.checkpoints[-1]).eval()
        tracin = TracInCP(net, TensorDataset(train_part.features, train_part.labels), paths, checkpoints_load_func=load,
                          loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=256,
                          sample_wise_grads_per_batch=False)
        scores = tracin.influence((test_part.features, test_part.labels), k=None, show_progress=False)
        return scores.detach().cpu().numpy(), {}

    return run


def _traker(family: str, model, train, test):
    import torch
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    module = model.module
    n_parameters = sum(p.numel() for p in module.parameters())

    def run(train_part, test_part):
        save_dir = tempfile.mkdtemp(prefix="traker-")
        projector = BasicProjector(grad_dim=n_parameters, proj_dim=2048, seed=0, proj_type=ProjectionType.rademacher,
                                   device="cpu", dtype=torch.float32)
        traker = TRAKer(model=module, task="image_classification", train_set_size=len(train_part), save_dir=save_dir,
                        device="cpu", projector=projector, proj_dim=2048, use_half_precision=False,
                        logging_level=40)
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        traker.load_checkpoint(state, model_id=0)
        for start in range(0, len(train_part), 256):
            x, y = train_part.features[start:start + 256], train_part.labels[start:start + 256]
            traker.featurize(batch=(x, y), num_samples=len(x))
        traker.finalize_features()
        traker.start_scoring_checkpoint(exp_name="test", checkpoint=state, model_id=0, num_targets=len(test_part))
        for start in range(0, len(test_part), 256):
            x, y = test_part.features[start:start + 256], test_part.labels[start:start + 256]
            traker.score(batch=(x, y), num_samples=len(x))
        scores = traker.finalize_scores(exp_name="test")
        return torch.as_tensor(scores).T.float().cpu().numpy(), {}

    return run


RUNNERS = {"ours": _ours, "dattri": _dattri, "captum": _captum, "traker": _traker}


def measure(spec: dict, clock, memory) -> dict:
    """One side of one family on one setting, in this (fresh) worker."""
    import numpy as np

    from gda_core.inputs.zoo import load_model

    train, test = setting_data(spec["setting"])
    if spec.get("test_limit"):
        test = test.subset(slice(0, spec["test_limit"]))
    folder = Path(spec["work_dir"]) / spec["setting"]
    model = load_model(folder / "model")
    model.module.eval()
    extra = {"lissa_depth": spec.get("lissa_depth")} if spec["side"] == "dattri" else {}
    run = RUNNERS[spec["side"]](spec["family"], model, train, test, **extra)
    warmup = 0.0
    if spec["warmup"]:
        clock.start()
        run(train.subset(slice(0, 64)), test.subset(slice(0, 2)))
        warmup = clock.stop()[0]
        clock.reset()
    memory.start()
    clock.start()
    scores, info = run(train, test)
    seconds, cpu = clock.stop()
    peak = memory.stop()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(test), len(train)):
        raise RuntimeError(f"{spec['side']} {spec['family']} gave scores of shape {scores.shape}")
    limit = f"-test{spec['test_limit']}" if spec.get("test_limit") else ""
    limit += f"-depth{spec['lissa_depth']}" if spec.get("lissa_depth") and spec["family"] == "if-lissa" else ""
    path = folder / f"scores-{spec['family']}-{spec['side']}-{spec['threads']}{limit}.npy"
    np.save(path, scores)
    from harness import json_safe

    return {"seconds": seconds, "cpu_seconds": cpu, **peak, "warmup_seconds": warmup,
            "other_cpu_seconds": clock.other_cpu, "clocked_seconds": clock.clocked,
            "scores_file": str(path), "scores_finite": bool(np.isfinite(scores).all()), "method_info": json_safe(info)}


def lds_of(scores_file: str, work_dir: Path) -> dict | None:
    """LDS of saved (n_test, N) scores against the digits ensemble: as returned, and negated
    (a peer's sign convention may be the opposite of ours)."""
    import numpy as np

    from gda_core.evaluation.gold import LDSEnsemble, lds

    path = Path(work_dir) / "digits" / "lds.npz"
    if not path.exists():
        return None
    stored = np.load(path)
    scores = np.load(scores_file)
    # the first len(scores) test points: all of them unless --peer-test-limit
    ensemble = LDSEnsemble(stored["masks"], stored["outputs"][:, :len(scores)], 0.5, {})
    if not np.isfinite(scores).all():
        return {"lds": None, "note": "non-finite scores"}
    native = lds(scores, ensemble)
    return {"lds": round(native["lds"], 4), "lds_se": round(native["lds_se"], 4),
            "lds_negated": round(lds(-scores, ensemble)["lds"], 4)}


# ------------------------------------------------------------------------------ parent side
def main(args, runner_for, log, timeout: float) -> dict:
    """Every (setting, threads, family, side), each in a fresh worker; the report's ``peers``
    section. ``runner_for(threads)`` gives a Runner pinned to that many threads."""
    import statistics

    settings = [s for s in args.settings.split(",") if s]
    families = [f for f in (args.families.split(",") if args.families else FAMILIES) if f]
    unknown = [f for f in families if f not in FAMILIES] + [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown families or settings: {', '.join(unknown)}")
    threads_list = [int(t) for t in args.peer_threads.split(",")]
    missing = {peer: "not installed (pip install dattri==0.3.0 captum==0.9.0 traker==0.3.2 into this venv)"
               for peer in ("dattri", "captum", "traker") if not available(peer)}
    skip = {item for item in (args.peer_skip or "").split(",") if item}
    skip_note = args.peer_skip_note or "skipped (--peer-skip)"
    report: dict = {"settings": {}, "peer_settings": PEER_SETTINGS, "missing_peers": missing, "rows": []}
    for setting in settings:
        log(f"[peers] {setting}: training the model{' and the LDS ensemble' if setting == 'digits' else ''} ...")
        stored = Path(args.work_dir_path) / setting / "prepared.json"
        if args.reuse_results and stored.exists():
            prepared = json.loads(stored.read_text())
        else:
            prepared = runner_for(threads_list[0]).run({"job": "peer-prepare", "setting": setting,
                                                        "train_epochs": args.peer_epochs}, timeout * 4)
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_text(json.dumps(prepared))
        report["settings"][setting] = prepared
        if prepared["status"] != "ok":
            log(f"  {prepared['status']}: {prepared['note']}")
            continue
        for threads in threads_list:
            runner = runner_for(threads)
            for family in families:
                sides = ["ours"] + [p for p in PEERS[family] if p not in missing]
                row: dict = {"setting": setting, "threads": threads, "family": family, "sides": {},
                             "n_test": min(prepared["n_test"], args.peer_test_limit or prepared["n_test"])}
                if family == "if-lissa" and args.peer_lissa_depth:
                    row["dattri_lissa_depth"] = args.peer_lissa_depth
                for peer in PEERS[family]:
                    if peer in missing:
                        row["sides"][peer] = {"status": "skipped", "note": missing[peer]}
                for side in sides:
                    if f"{family}:{side}" in skip:
                        row["sides"][side] = {"status": "skipped", "note": skip_note}
                        continue
                    log(f"[peers] {setting} {threads} thread(s) {family} {side} ...")
                    limit = f"-test{args.peer_test_limit}" if args.peer_test_limit else ""
                    limit += f"-depth{args.peer_lissa_depth}" if args.peer_lissa_depth and family == "if-lissa" else ""
                    stored = Path(args.work_dir_path) / setting / f"result-{family}-{side}-{threads}{limit}.json"
                    if args.reuse_results and stored.exists():
                        runs = json.loads(stored.read_text())
                    else:
                        runs = []
                        for _ in range(args.repeats):
                            result = runner.run({"job": "peer-measure", "setting": setting, "family": family,
                                                 "side": side, "test_limit": args.peer_test_limit,
                                                 "lissa_depth": args.peer_lissa_depth}, timeout)
                            runs.append(result)
                            if result["status"] != "ok":
                                break
                        stored.write_text(json.dumps(runs))
                    result = dict(runs[-1])
                    if all(r["status"] == "ok" for r in runs):
                        result["seconds"] = statistics.median(r["seconds"] for r in runs)
                        result["peak_mb"] = statistics.median(r["peak_mb"] for r in runs)
                        if setting == "digits":
                            result["lds"] = lds_of(result["scores_file"], args.work_dir_path)
                        log(f"  {result['seconds']:.2f} s, peak +{result['peak_mb']:.0f} MB"
                            + (f", LDS {result['lds']}" if result.get("lds") else ""))
                    else:
                        log(f"  {result['status']}: {result.get('note')}")
                    keep = ("status", "note", "seconds", "cpu_seconds", "peak_mb", "warmup_seconds",
                            "other_cpu_seconds", "lds", "scores_finite", "method_info", "attempts")
                    row["sides"][side] = {k: result[k] for k in keep if k in result}
                row.update(_verdict(row))
                report["rows"].append(row)
    return report


def _verdict(row: dict) -> dict:
    """Fastest peer, ours / its speed ratio, the 3x target and the LDS comparison."""
    ours = row["sides"].get("ours", {})
    peers = {name: side for name, side in row["sides"].items() if name != "ours" and side.get("status") == "ok"}
    if ours.get("status") != "ok" or not peers:
        return {"speedup_vs_fastest_peer": None, "target_3x_met": None}
    fastest = min(peers, key=lambda name: peers[name]["seconds"])
    speedup = peers[fastest]["seconds"] / max(ours["seconds"], 1e-9)
    out = {"fastest_peer": fastest, "speedup_vs_fastest_peer": round(speedup, 2), "target_3x_met": speedup >= 3}
    if ours.get("lds") and peers[fastest].get("lds"):
        peer_lds = peers[fastest]["lds"]
        signs = [v for v in (peer_lds.get("lds"), peer_lds.get("lds_negated")) if v is not None]
        best_peer = max(signs) if signs else None
        out["lds_ours"], out["lds_fastest_peer_best_sign"] = ours["lds"]["lds"], best_peer
        out["lds_equal_or_better"] = (ours["lds"]["lds"] is not None
                                      and (best_peer is None or ours["lds"]["lds"] >= best_peer - 0.01))
    return out


def table(report: dict) -> list[str]:
    """One line per row, for the log."""
    lines = []
    for row in report["rows"]:
        cells = []
        for side, result in row["sides"].items():
            if result.get("status") == "ok":
                lds = result.get("lds") or {}
                cells.append(f"{side} {result['seconds']:.2f}s/{result['peak_mb']:.0f}MB"
                             + (f"/LDS {lds.get('lds')}" if lds else ""))
            else:
                cells.append(f"{side} {result.get('status')}")
        lines.append(f"{row['setting']} t={row['threads']} {row['family']}: {' | '.join(cells)} -> "
                     f"x{row.get('speedup_vs_fastest_peer')}")
    return lines
