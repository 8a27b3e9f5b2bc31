"""`finllm eval`: forecast quality on the held-out last part of a tape, with 95% intervals and plots."""
from __future__ import annotations

from pathlib import Path

import click
import orjson

from agents.cli.options import model_option
from agents.config import AgentsConfig


@click.command(name="eval")
@click.option("--tape", "tape_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("eval-out"), show_default=True)
@click.option("--adapters", "adapters_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with routing.json and the adapters it names (default: the shipped adapters).")
@click.option("--no-adapters", is_flag=True, help="Score with the bare base model.")
@click.option("--engine", type=click.Choice(["hf", "paged"]), default="hf", show_default=True)
@click.option("--dtype", type=click.Choice(["float64", "float32", "bfloat16"]),
              help="Paged engine's dtype (default: the processor's fast one: bfloat16 with native bf16, else float32).")
@click.option("--max-forecasts", type=int, help="Evaluate at most this many held-out forecasts (evenly spaced).")
@model_option()
@click.option("--test-fraction", default=0.3, show_default=True, help="Last share of the tape evaluated.")
@click.option("--resamples", "--bootstrap", "n_boot", default=1000, show_default=True,
              help="Bootstrap resamples for the intervals (--bootstrap: the older name).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--no-plots", is_flag=True)
@click.option("--fit-weights", is_flag=True,
              help="Fit the fusion weights on the tape's first part (least log-loss) and evaluate with them.")
def eval_cmd(tape_dir: Path, out_dir: Path, adapters_dir: Path | None, no_adapters: bool, engine: str,
             dtype: str | None, max_forecasts: int | None, model: str | None, test_fraction: float, n_boot: int, seed: int, threads: int | None,
             no_plots: bool, fit_weights: bool) -> None:
    """Replay the evaluation part of TAPE through the pipeline's computation and score the forecasts.

    This runs offline, without Kafka: the agents' offline processor builds the same requests a
    replay would (prompts, numeric forecasts, adapter routing), a Scorer (as in the inference
    worker) scores them and `inference.fusion.fuse` fuses them, which is the pipeline's
    computation without the broker. Reports accuracy, MCC, Brier, log-loss and calibration error
    of the numeric, language-model and fused forecasts and of baselines (majority class, momentum
    sign, random walk), each with a 95% cluster-bootstrap interval, and a latency-adjusted hit
    rate; writes OUT/eval.json, OUT/forecasts.parquet and PNG plots. The language model is scored twice:
    zero-shot (no adapter) and with each symbol's routed adapter; the fused forecast uses each adapter's
    fitted weights from its card (`inference.fusion`), or FINLLM_FUSION_W_* when set, or --fit-weights.
    """
    from agents.lab.evaluate import EvalOptions, evaluate_tape, write_plots
    from inference.fusion import FusionPolicy
    from streams.tape import Tape

    if threads:
        import torch
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir, cfg, adapter_paths = _setup(model, None if no_adapters else adapters_dir, no_adapters)
    scorer = _scorer(engine, model_dir, adapter_paths, dtype)
    tape = Tape.read(tape_dir)
    opts = EvalOptions(test_fraction=test_fraction, n_boot=n_boot, seed=seed,
                       policy=FusionPolicy.from_env(adapter_paths), fit_weights=fit_weights,
                       max_forecasts=max_forecasts)
    try:
        evaluation = evaluate_tape(tape, cfg, scorer, opts)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    finally:
        scorer.close()
    report = evaluation.report | {"tape": str(tape_dir), "engine": engine, "adapters": sorted(adapter_paths)}
    (out_dir / "eval.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    evaluation.frame.write_parquet(out_dir / "forecasts.parquet")
    plots = [] if no_plots else write_plots(evaluation, tape, out_dir)
    click.echo(summary(report) + f"\nwrote {out_dir / 'eval.json'} and {len(plots)} plots")


def _setup(model: str | None, adapters_dir: Path | None, no_adapters: bool) -> tuple[Path, AgentsConfig, dict]:
    """(model folder, agents config routing symbols to adapters, adapter name -> folder)."""
    from agents.lab.examples import with_adapters
    from inference.adapters.shipped import load_routing, shipped_routing
    from inference.checkpoints import resolve_model_dir

    model_dir = resolve_model_dir(model)
    cfg = AgentsConfig.from_env()
    if no_adapters:
        return model_dir, with_adapters(cfg, {}, None), {}
    routing = load_routing(adapters_dir) if adapters_dir else shipped_routing(model)
    if routing is None:
        raise click.UsageError(f"no adapters are shipped for {model}: name a folder with --adapters-dir, "
                               "or --no-adapters")
    _check_base(model_dir, routing.adapters)
    return model_dir, with_adapters(cfg, routing.routes, routing.default), {n: str(p) for n, p in routing.adapters.items()}


def _check_base(model_dir: Path, adapters: dict) -> None:
    from inference.adapters.cards import read_card
    from inference.checkpoints import model_fingerprint

    served = model_fingerprint(model_dir)
    wrong = {name: read_card(path).get("base_model_hash") for name, path in adapters.items()}
    wrong = {name: base for name, base in wrong.items() if base and base != served}
    if wrong:
        raise click.ClickException(f"adapters trained on another base model than {model_dir} ({served}): {wrong}")


def _scorer(engine: str, model_dir: Path, adapters: dict, dtype: str | None = None):
    from inference.scorers.factory import build_scorer
    return build_scorer(engine, model_dir, adapters=adapters, dtype=dtype)


def summary(report: dict) -> str:
    from agents.lab.evaluate import BASELINES, FORECASTS

    lines = [f"{report['n']} forecasts evaluated of {report['held_out_forecasts']} held out, {report['with_news']} "
             f"with news (after {report['train_forecasts']} for the baselines' fit)",
             f"{'forecast':<14} {'accuracy':>8} {'mcc':>7} {'mcc 95% CI':>17} {'brier':>6} {'logloss':>7} {'ece':>6}"]
    rows = [(name, report[name]) for name in FORECASTS] + [(n, report["baselines"][n]) for n in BASELINES]
    for name, m in rows:
        low, high = m["mcc_ci"]
        lines.append(f"{name:<14} {m['accuracy']:8.3f} {m['mcc']:7.3f} [{low:7.3f},{high:7.3f}] "
                     f"{m['brier']:6.3f} {m['logloss']:7.3f} {m['ece']:6.3f}")
    weights = report["fusion_weights"]
    lines.append("fusion weights numeric/llm: " + ", ".join(f"{w} x{n}" for w, n in weights["numeric/llm"].items())
                 + (f" (fitted on {weights['fitted']['forecasts']} earlier forecasts)" if weights["fitted"] else ""))
    diff = report["fused_vs_numeric_mcc"]
    lines.append(f"fused - numeric MCC {diff['difference']:+.3f} (paired 95% CI {diff['ci'][0]:+.3f}, "
                 f"{diff['ci'][1]:+.3f}); beats by more than the widest interval ({diff['widest_interval']:.3f}): "
                 f"{diff['beats_by_more_than_interval']}")
    lines.append("targets: " + ", ".join(f"{name} {met}" for name, met in report["targets"].items()))
    hits = report["latency_adjusted_hit_rate"]
    lines.append("latency-adjusted hit rate: " + ", ".join(f"{n} {hits[n]['hit_rate']:.3f}" for n in FORECASTS
                                                           if hits[n]["hit_rate"] is not None))
    return "\n".join(lines)
