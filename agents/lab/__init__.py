"""Offline tooling around the agents runtime: the demo's orchestration and report, training-set
building, adapter training and evaluation. Nothing here runs in the live pipeline."""

TASKS = ("direction", "sentiment")  # what an example's label is: the realised move, or the news item's sentiment
