"""Experiments and reports: score sets once, tune on a tuning split, evaluate, draw figures."""
