"""Evaluation: statistics, gold standards, fidelity sweeps, flagging, noisy labels, pruning."""
