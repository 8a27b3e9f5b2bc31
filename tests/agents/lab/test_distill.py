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
