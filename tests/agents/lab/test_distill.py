"""`finllm adapters distill` on the tiny model: a base-tier adapter that learns the deep tier's answers."""
import subprocess
import sys

import orjson
import pytest

from streams.synth import write_synth_tape


@pytest.mark.integration
def test_the_distill_command_reports_agreement_and_quality_with_intervals(tmp_path):
    tape = tmp_path / "tape"
    write_synth_tape(tape, 2, 30, seed=4)
    done = subprocess.run([sys.executable, "-m", "agents.cli", "adapters", "distill", "--tape", str(tape),
                           "--out", str(tmp_path / "base"), "--base", "tiny", "--rank", "4", "--max-steps", "20",
                           "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = orjson.loads(done.stdout)
    low, high = report["agreement_ci"]
    assert 0.0 <= low <= report["agreement"] <= high <= 1.0 and report["n"] > 10
    for tier in ("base", "deep"):
        assert report[tier]["mcc_ci"][0] <= report[tier]["mcc"] <= report[tier]["mcc_ci"][1]
    assert (tmp_path / "base" / "adapter_config.json").is_file()
    assert orjson.loads((tmp_path / "base" / "card.json").read_bytes())["distill"]["n"] == report["n"]


@pytest.mark.integration
def test_a_smaller_student_learns_the_deep_tiers_answers_on_its_own_model(tmp_path):
    """The base tier's student is another model (here the tiny model cut to one layer): a fresh LoRA on its
    last layer, trained toward the teacher's distribution, saved against the student's fingerprint, with its
    fusion weights fitted; its KL to the teacher falls as it trains."""
    from inference.checkpoints import model_fingerprint, resolve_model_dir
    from inference.checkpoints.store import write_into
    from inference.checkpoints.truncate import truncate_model

    student = write_into(tmp_path / "student", lambda s: truncate_model(resolve_model_dir("tiny"), 1, s, {}))
    tape = tmp_path / "tape"
    write_synth_tape(tape, 2, 30, seed=4)

    def distill(out: str, steps: int) -> dict:
        done = subprocess.run([sys.executable, "-m", "agents.cli", "adapters", "distill", "--tape", str(tape),
                               "--out", str(tmp_path / out), "--base", "tiny", "--student", str(student),
                               "--rank", "4", "--max-steps", str(steps), "--lr", "3e-3", "--threads", "1"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return orjson.loads(done.stdout)

    report = distill("base", 60)
    card = orjson.loads((tmp_path / "base" / "card.json").read_bytes())
    assert card["base_model_hash"] == model_fingerprint(student) and card["init_from"] is None
    assert card["tier"] == "base" and set(card["fusion"]) >= {"news", "no_news"} and card["distill"]["n"] == report["n"]
    training = card["training"]     # the KL to the teacher's distribution, first step and last epoch
    assert training["last_loss"] < 0.5 * training["first_loss"], training
