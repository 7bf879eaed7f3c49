"""Runs: the score store (cache and job state), background jobs, and label review decisions."""
