"""agents.lab.training without a model: the sector table and the errors it raises."""
import pytest

from agents.lab.examples import Split
from agents.lab.training import SECTORS, TrainingError, train_on_split
from inference.adapters.shipped import shipped_routing
from streams.synth import COMPANIES


def test_sectors_hold_every_synthetic_ticker_once_in_a_stable_order():
    tickers = [ticker for symbols in SECTORS.values() for ticker in symbols]
    assert sorted(tickers) == sorted(ticker for ticker, _ in COMPANIES)
    assert list(SECTORS) == ["industrials", "technology", "healthcare", "consumer"]


def test_the_shipped_routing_follows_the_sectors():
    shipped = shipped_routing("tiny").sectors
    assert {sector: set(symbols) for sector, symbols in shipped.items()} == \
        {sector: set(symbols) for sector, symbols in SECTORS.items()}


def test_a_split_with_an_empty_side_is_a_training_error(tmp_path):
    with pytest.raises(TrainingError, match="both sides of the split: 0 train, 0 test"):
        train_on_split(tmp_path, Split((), (), 0), tmp_path / "out", None, task="direction", tape="none")
