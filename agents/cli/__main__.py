"""`python -m agents.cli`: the same as the `finllm` script."""
from agents.cli import main

main()
