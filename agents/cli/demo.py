"""`finllm demo`: the command around `agents.lab.demo.run_demo`."""
from __future__ import annotations

from pathlib import Path

import click
import orjson

from agents.cli.options import bootstrap_option, model_option, redis_option


@click.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--tape", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Tape folder (default: the bundled sample tape).")
@click.option("--speed", type=float, help="Replay at this multiple of real time (default: 30 on CPUs with native "
              "bf16, AMX or AVX-512 bf16, or a GPU, else 15; see README \"Quick start\").")
@click.option("--max", "as_fast", is_flag=True, help="Replay as fast as possible (latency then includes backlog).")
@click.option("--partitions", default=4, show_default=True)
@bootstrap_option("Use this Kafka instead of the embedded broker.")
@redis_option("Use this Redis instead of the embedded one.")
@click.option("--engine", type=click.Choice(["paged", "hf"]), default="paged", show_default=True,
              help="paged: our multi-LoRA engine; hf: transformers + PEFT.")
@model_option()
@click.option("--timeout", "timeout_s", default=600.0, show_default=True, help="Seconds to wait for forecasts.")
@click.option("--inject-bad", default=0, show_default=True, help="Send this many malformed records first.")
@click.option("--agents-workers", default=1, show_default=True, help="Agents worker processes (split by partition).")
@click.option("--bundle-ms", default=0, show_default=True, help="Replay ticks in per-symbol bundles of this span.")
@click.option("--adapters/--no-adapters", default=True, show_default=True,
              help="Serve the LoRA adapters shipped for the model (one per sector), if it has any.")
@click.option("--deep-tier/--no-deep-tier", default=True, show_default=True,
              help="Start the deep tier's worker (escalated forecasts are answered again, as revision 1).")
def demo(out_dir: Path, tape: Path | None, speed: float | None, as_fast: bool, partitions: int, bootstrap: str | None,
         redis_url: str | None, engine: str, model: str | None, timeout_s: float, inject_bad: int,
         agents_workers: int, bundle_ms: int, adapters: bool, deep_tier: bool) -> None:
    """Replay a tape through the whole pipeline and report forecasts, latency and accuracy."""
    from agents.lab.demo import DemoOptions, default_speed, run_demo
    from streams.synth import sample_tape_path

    if speed is not None and as_fast:
        raise click.UsageError("--speed and --max exclude each other")
    speed = speed or default_speed()
    opts = DemoOptions(out_dir, tape or sample_tape_path(), None if as_fast else speed, partitions, bootstrap, redis_url, engine,
                       model, timeout_s, inject_bad, agents_workers, bundle_ms, adapters, deep_tier)
    report = run_demo(opts)
    (out_dir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    click.echo(summary(report))
    if report["missing"]:
        raise click.ClickException(f"{report['missing']} of {report['triggers']} triggers got no forecast")


def summary(report: dict) -> str:
    lat, revision_lat = report["latency_ms"], report["revision_latency_ms"]
    return "\n".join([
        f"served by         {', '.join(f'{t} tier {m}' for t, m in report.get('models', {}).items()) or report['model']} "
        f"({report['engine']} engine, {report['dtype']}, "
        f"quantised {', '.join(f'{t} {q}' for t, q in report.get('quant', {}).items())}, "
        f"{report['model_threads']} model threads); workers ready in {report['startup_s']} s, "
        f"whole run {report['wall_s']} s",
        f"processor         {report['processor']}",
        f"events replayed   {report['events']} ({report['ticks']} ticks, {report['news']} news)",
        f"forecasts         {report['forecasts']} of {report['triggers']} triggers "
        f"(missing {report['missing']}, duplicates on the wire {report['wire_duplicates']})",
        f"first answers     {report['status']}, dead letters {report['deadletters'] or 0}",
        f"tick-to-forecast  p50 {lat['p50']} ms, p99 {lat['p99']} ms (first answers)",
        f"tiers             {report['tiers']} (deep share {report['deep_share']}, skipped the LLM "
        f"{report['skipped_llm']}, still awaiting deep {report['awaiting_deep']}); deep revisions "
        f"{report['revision_status']}, p50 {revision_lat['p50']} ms, p99 {revision_lat['p99']} ms",
        f"accuracy          fused {report['accuracy']}, numeric {report['accuracy_numeric']}, "
        f"llm {report['accuracy_llm']} over {report['scored']} scored forecasts",
    ])
