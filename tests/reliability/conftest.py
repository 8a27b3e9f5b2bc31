"""A small synthetic tape and the forecasts an undisturbed run yields for it, shared by the fault tests."""
from __future__ import annotations

import pytest

from agents.config import AgentsConfig
from streams.synth import write_synth_tape
from streams.tape import Tape


@pytest.fixture(scope="session")
def tape(tmp_path_factory) -> Tape:
    """3 symbols, 12 minutes: 36 triggers (cadence and news)."""
    folder = tmp_path_factory.mktemp("tape")
    write_synth_tape(folder, 3, 12, seed=11)
    return Tape.read(folder)


@pytest.fixture(scope="session")
def expected(tape) -> dict[str, tuple]:
    from tests.reliability.pipeline import expected_forecasts
    return expected_forecasts(tape, AgentsConfig())
