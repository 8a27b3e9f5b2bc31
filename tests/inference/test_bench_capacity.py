"""`python bench/engine.py --capacity` end to end on the tiny model: every key the engine issue names, one JSON line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("model", "dtype", "cpu", "threads", "roofline_score_rps", "ours_score_rps", "hf_score_rps",
        "ours_score_rps_100", "peft_mixed_score_rps_100", "llamacpp_score_rps", "llamacpp_decode_tok_s_b1",
        "ours_decode_tok_s_b1", "hf_decode_tok_s_b1", "ours_decode_tok_s_b16", "ours_int8_score_rps",
        "ours_int8_decode_tok_s_b1", "int8_label_max_abs_dp")


def test_capacity_bench_prints_every_figure_as_one_json_line(tiny_model_dir):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine.py"), "--capacity", "--model", tiny_model_dir, "--quick",
         "--requests", "3", "--prompt-len", "24", "--decode-tokens", "3", "--adapters", "3", "--label-prompts", "2",
         "--threads", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(KEYS) <= set(out)
    for key in KEYS[4:]:
        if key.startswith("llamacpp") and out[key] is None:
            continue                               # the optional bench extra is not installed
        if key == "int8_label_max_abs_dp":
            assert 0 <= out[key] < 0.5
        else:
            assert out[key] > 0, key
    assert out["ours_vs_hf_score"] == round(out["ours_score_rps"] / out["hf_score_rps"], 3)
