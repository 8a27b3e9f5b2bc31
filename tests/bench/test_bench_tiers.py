"""bench/tiers.py end to end on the tiny model: it runs, and its last line holds the issue's keys with sane values.

The tiny model's figures say nothing of the tiers' merit (its answers carry no signal); this checks the
script: three configurations answered, staggered arrivals under overload counted, intervals ordered.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("deep_share", "mcc_base", "mcc_deep_all", "mcc_tiered", "mcc_deep_all_ci", "rps_deep_all", "rps_tiered",
        "expired_share_overload_base", "expired_share_overload_deep_all", "expired_share_overload_tiered")


def test_quick_run_on_the_tiny_model_reports_every_key(tmp_path):
    command = [sys.executable, "bench/tiers.py", "--quick", "--model", "tiny", "--out", str(tmp_path),
               "--overload-s", "3", "--deadline-ms", "1500"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert set(KEYS) <= set(result)
    assert result["triggers"] > 0 and result["arrivals_overload"] > 0
    for name in ("base", "deep_all", "tiered"):
        assert 0.0 <= result[f"expired_share_overload_{name}"] <= 1.0
        assert result[f"rps_{name}"] > 0
        low, high = result[f"mcc_{name}_ci"]
        assert -1.0 <= low <= high <= 1.0
    assert 0.0 <= result["deep_share"] <= 1.0 and 0.0 <= result["skipped_share"] <= 1.0
    assert abs(result["overload_rate_per_s"] - 2 * result["rps_deep_all"]) <= 0.02   # both rounded to 0.01
    assert result["adapters"] and result["base_quant"] in ("int8", "none") and result["deep_quant"] == "none"
    revised, escalated = result["deep_revisions_overload_tiered"]
    assert 0 <= revised <= escalated
