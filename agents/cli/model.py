"""`finllm model list|convert|verify`: the base models known by name, their conversion into the cache, and
a check that a model folder is whole and that our engine computes on it what transformers computes.

The registry and conversion are `inference.checkpoints`; the engine-vs-transformers check is
`inference.scorers.parity`. Nothing is downloaded.
"""
from __future__ import annotations

import time

import click
import orjson


@click.group()
def model() -> None:
    """Base models: list the known ones, convert one into the cache, verify a model folder."""


@model.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model.")
def list_cmd(as_json: bool) -> None:
    """Every registered model: converted or not, fingerprint, size, folder."""
    from inference.checkpoints import MODELS, model_status

    rows = [model_status(spec) for spec in MODELS.values()]
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    click.echo(f"{'name':<14} {'converted':<9} {'fingerprint':<16} {'size MB':>8} {'prompt':<6} folder")
    for row in rows:
        size = "-" if row["size_mb"] is None else f"{row['size_mb']:.1f}"
        click.echo(f"{row['name']:<14} {'yes' if row['converted'] else 'no':<9} {row['fingerprint'] or '-':<16} "
                   f"{size:>8} {row['prompt']:<6} {row['folder']}")


@model.command()
@click.argument("name")
def convert(name: str) -> None:
    """Convert (or build) the registered model NAME into the cache, once; print its folder and fingerprint."""
    from inference.checkpoints import ModelBuildError, ensure_named_model, model_fingerprint

    started = time.perf_counter()
    try:
        path = ensure_named_model(name)
    except (KeyError, ModelBuildError) as error:
        raise click.ClickException(str(error).strip("'\"")) from None
    click.echo(f"folder       {path}")
    click.echo(f"fingerprint  {model_fingerprint(path)}")
    click.echo(f"seconds      {time.perf_counter() - started:.1f}")


@model.command()
@click.argument("name_or_path")
def verify(name_or_path: str) -> None:
    """Check a model (a registered NAME, converted first if need be, or a folder PATH): its weights against
    its manifest, its fingerprint, its config and tokenizer and label words, and our engine against
    transformers on one prompt in float32 (exit 1 when a logit differs by more than 1e-3)."""
    from inference.checkpoints import ModelBuildError, resolve_model_dir
    from inference.scorers.parity import PARITY_TOLERANCE, engine_vs_transformers

    try:
        path = resolve_model_dir(name_or_path)
        for key, value in _static_checks(path):
            click.echo(f"{key:<13}{value}")
    except (KeyError, FileNotFoundError, ModelBuildError, ValueError) as error:
        raise click.ClickException(str(error).strip("'\"")) from None
    parity = engine_vs_transformers(path)
    click.echo(f"{'parity':<13}{parity.prompt_tokens}-token prompt; engine label logits "
               + " ".join(f"{v:.4f}" for v in parity.label_logits))
    click.echo(f"{'max |diff|':<13}{parity.max_abs_diff:.3g} over {parity.compared_logits} logits "
               f"(engine vs transformers, float32)")
    if parity.max_abs_diff > PARITY_TOLERANCE:
        raise click.ClickException(f"engine and transformers differ by {parity.max_abs_diff:.3g} > {PARITY_TOLERANCE}")
    click.echo("ok")


def _static_checks(path):
    """(label, value) lines: manifest and weights, fingerprint, config, tokenizer and label tokens."""
    from transformers import AutoConfig, AutoTokenizer

    from inference.checkpoints import MANIFEST_NAME, ModelBuildError, model_fingerprint, read_manifest, verify_model
    from inference.scorers.prompting import PromptFormat

    yield "folder", path
    fingerprint = model_fingerprint(path)
    if (path / MANIFEST_NAME).is_file():
        verify_model(path)
        recorded = read_manifest(path).get("fingerprint")
        if recorded is not None and recorded != fingerprint:
            raise ModelBuildError(f"{path}: fingerprint {fingerprint} != manifest's {recorded}")
        yield "weights", "match the manifest's sha256"
    yield "fingerprint", fingerprint
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    yield "config", (f"{config.model_type}, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                     f"vocab {config.vocab_size}")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    prompt_format = PromptFormat.for_model(tokenizer, path)
    words = ", ".join(f"{w!r}={i}" for w, i in zip(prompt_format.settings.label_words, prompt_format.label_ids))
    yield "prompt", "chat template" if prompt_format.settings.chat else "plain"
    yield "labels", words
