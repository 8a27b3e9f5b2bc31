"""`finllm`: the whole command line, one module per command group.

Every command module imports only click, orjson and light settings at the top; what a command
needs to run (Kafka clients, polars, torch, the demo) it imports inside its function, so that
`finllm --help` and light commands start fast.
"""
from __future__ import annotations

import click

from agents.cli.adapters import adapters
from agents.cli.audit import audit
from agents.cli.demo import demo
from agents.cli.eval import eval_cmd
from agents.cli.explain import explain
from agents.cli.model import model
from agents.cli.serve import serve
from agents.cli.stack import latest, replay_cmd, status, tail, up
from agents.cli.tape import tape


@click.group()
def cli() -> None:
    """Fin-LLM-Inference: ticks and news in, fused LLM forecasts out."""


for command in (up, replay_cmd, tail, latest, status, tape, demo, adapters, eval_cmd, audit, model, serve,
                explain):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="finllm")
