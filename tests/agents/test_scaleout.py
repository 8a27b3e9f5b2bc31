"""Two agents workers in one group split the symbols between them and give the forecasts of one."""
import re

import polars as pl
import pytest

from agents.config import AgentsConfig
from agents.lab.demo import DemoOptions, run_demo
from agents.offline import fired_triggers
from agents.processor import Processor
from streams.synth import write_synth_tape
from streams.tape import Tape

pytestmark = pytest.mark.integration


def test_two_agents_workers_split_partitions_and_match_the_offline_forecasts(tmp_path, kafka_bootstrap, redis_url):
    write_synth_tape(tmp_path / "tape", 6, 8, seed=21)
    tape = Tape.read(tmp_path / "tape")
    opts = DemoOptions(tmp_path / "out", tmp_path / "tape", speed=None, partitions=4, bootstrap=kafka_bootstrap,
                       redis_url=redis_url, engine="hf", timeout_s=180, agents_workers=2)
    report = run_demo(opts)
    assert report["missing"] == 0 and report["unexpected"] == 0
    assert report["worker_exit_codes"] == {"agents-0": 0, "agents-1": 0, "inference": 0, "inference-deep": 0}

    owned = [_last_assignment((tmp_path / "out" / "run" / f"agents-{i}.log").read_text()) for i in range(2)]
    assert all(owned) and set(owned[0]).isdisjoint(owned[1]) and sorted(owned[0] + owned[1]) == [0, 1, 2, 3]

    cfg = AgentsConfig()
    offline = Processor(cfg, gated=False)
    expected = {f.id: offline.request(f, 0) for f in fired_triggers(tape.events(), cfg)}
    frame = pl.read_parquet(tmp_path / "out" / "forecasts.parquet")
    for row in frame.iter_rows(named=True):
        request = expected[row["id"]]
        assert tuple(row["news_ids"]) == request.news_ids
        assert (row["numeric_p_up"], row["numeric_p_down"], row["numeric_p_flat"]) == request.numeric.as_tuple()


def _last_assignment(log: str) -> list[int]:
    found = re.findall(r"assigned \S*ticks partitions \[([0-9, ]*)\]", log)
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else []
