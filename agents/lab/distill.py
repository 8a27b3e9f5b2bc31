"""`finllm adapters distill`: train the base tier's adapter to answer its short prompt as the deep tier
answers the longer one.

The teacher is the deep tier: the deep model with `teacher` (an adapter folder, or none) scoring each
example's deep prompt (`InferenceRequest.prompt_deep`: more news, the price history). The student is
the base tier's model (`student_model`: by default the one the deep model's registry entry names, e.g.
SmolLM2's first 8 layers; else the deep model itself, then starting from the teacher's adapter) with a
fresh LoRA on its last layer, trained on the short prompt (the base tier's) to match the teacher's label
distribution with a KL loss (`LabelHeadTrainer.fit_soft`), on the tape's first part. On the held-out
last part the report gives the student's agreement with the teacher (same most probable direction) and
both forecasts' quality against the realised direction, each with a 95% cluster-bootstrap interval, and
the paired MCC difference student - teacher. The student's card also holds its fusion weights, fitted on
that held-out part as the shipped adapters' are (`agents.lab.training.fit_fusion`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from agents.config import AgentsConfig
from agents.lab.evaluate import example_clusters
from agents.lab.examples import Example, build_examples, label_array, split_by_time
from agents.lab.quality import cluster_resamples, evaluate_forecast, interval, paired_difference
from agents.lab.training import TrainingError, _model_dir, fit_fusion


def student_model_of(model: str | None, student_model: str | None) -> str | None:
    """The base tier's model for deep model `model`: `student_model` when given, else the one `model`'s
    registry entry names, else `model` itself."""
    from inference.checkpoints import base_tier_model

    return student_model or base_tier_model(model) or model


def distill_from_tape(tape_dir: Path, out: Path, model: str | None, tcfg, *, teacher: str | None = None,
                      student_model: str | None = None, test_fraction: float = 0.2, n_boot: int = 200) -> dict:
    """Distil the deep tier (`teacher` adapter of deep model `model` on the deep prompt) into a base-tier
    adapter of `student_model_of(model, student_model)` saved in `out`; the report (also in out/card.json's
    `distill`)."""
    from inference.adapters.train import InputCache, LabelHeadTrainer, base_card, write_card
    from streams.tape import Tape
    import torch

    cfg = AgentsConfig.from_env()
    split = split_by_time(build_examples(Tape.read(tape_dir), cfg), test_fraction, cfg.horizon_s)
    if not split.train or not split.test:
        raise TrainingError(f"need examples on both sides of the split: {len(split.train)} train, "
                            f"{len(split.test)} test")
    model_dir = _model_dir(model)
    student_dir = _model_dir(student_model_of(model, student_model))
    same = student_dir.resolve() == model_dir.resolve()
    deep, deep_cache = LabelHeadTrainer(model_dir, tcfg, teacher), InputCache()
    taught = {part: np.asarray(deep.predict(deep_cache.inputs(deep, _deep_prompts(examples))))
              for part, examples in (("train", split.train), ("test", split.test))}
    del deep, deep_cache
    init = teacher if same else None      # the teacher's adapter fits the student only on the same model
    student, cache = LabelHeadTrainer(student_dir, tcfg, init), InputCache()
    stats = student.fit_soft(cache.inputs(student, _short_prompts(split.train)),
                             torch.tensor(taught["train"], dtype=torch.float32))
    student.save(out)
    learnt = np.asarray(student.predict(cache.inputs(student, _short_prompts(split.test))))
    report = compare_tiers(learnt, taught["test"], split.test, n_boot)
    card = base_card(student_dir, tcfg, stats) | {
        "name": out.name, "task": "direction", "init_from": init, "teacher": teacher, "tier": "base",
        "distill": report, "tape": str(tape_dir), "fusion": fit_fusion(student, cache, split.test)}
    write_card(out, card)
    return report


def compare_tiers(base: np.ndarray, deep: np.ndarray, examples: tuple[Example, ...], n_boot: int,
                  seed: int = 0) -> dict:
    """Agreement of the base tier's forecasts [N, L] with the deep tier's [N, L], and the quality of each
    against the realised labels, with 95% cluster-bootstrap intervals."""
    y = label_array(examples)
    resamples = cluster_resamples(example_clusters(examples), n_boot, seed)
    agree = base.argmax(1) == deep.argmax(1)                                    # [N]
    return {"n": int(y.size), "agreement": float(agree.mean()),
            "agreement_ci": interval([float(agree[rows].mean()) for rows in resamples]),
            "base": evaluate_forecast(base, y, resamples), "deep": evaluate_forecast(deep, y, resamples),
            "mcc_base_minus_deep": paired_difference(base, deep, y, resamples)}


def _short_prompts(examples) -> list[str]:
    return [e.request.prompt for e in examples]


def _deep_prompts(examples) -> list[str]:
    return [e.request.prompt_deep or e.request.prompt for e in examples]
