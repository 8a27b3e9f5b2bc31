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


@pytest.mark.parametrize("args, folder, bf16", [((), "smollm2-135m", True), (("--model", "tiny"), "tiny", False),
                                                (("--model", "smollm2-135m", "--no-bf16-lower"), "smollm2-135m", False)])
def test_build_defaults_writes_each_base_models_set_in_its_own_folder(monkeypatch, args, folder, bf16):
    from click.testing import CliRunner

    import agents.lab.training as training
    from agents.cli import cli
    from inference.adapters.shipped import SHIPPED_DIR

    seen = {}

    def fake(out, log, model, *, train_every, bf16_lower):
        seen.update(out=out, model=model, train_every=train_every, bf16_lower=bf16_lower)
        return {}

    monkeypatch.setattr(training, "build_default_adapters", fake)
    monkeypatch.delenv("FINLLM_MODEL", raising=False)
    result = CliRunner().invoke(cli, ["adapters", "build-defaults", "--train-every", "2", *args])
    assert result.exit_code == 0, result.output
    assert seen["out"] == (SHIPPED_DIR / folder).resolve() and seen["bf16_lower"] is bf16 and seen["train_every"] == 2


def test_routes_go_to_a_sector_adapter_only_when_its_fusion_fit_trusts_it(tmp_path):
    from agents.lab.training import trusted_routes
    from inference.adapters.train import write_card

    def adapter(name, llm):
        (tmp_path / name).mkdir()
        fusion = None if llm is None else {"news": {"numeric": 1.0, "llm": llm}, "no_news": {"numeric": 1.0, "llm": 0.0}}
        write_card(tmp_path / name, {"fusion": fusion} if fusion else {})
        return tmp_path / name

    made = {"direction-all": adapter("direction-all", 0.4), "direction-technology": adapter("direction-technology", 0.8),
            "direction-industrials": adapter("direction-industrials", 0.0),
            "direction-healthcare": adapter("direction-healthcare", None), "direction-consumer": adapter("c", 0.0)}
    routes = trusted_routes(made)
    assert {routes[s] for s in SECTORS["technology"]} == {"direction-technology"}
    assert {routes[s] for s in SECTORS["industrials"]} == {"direction-all"}
    assert {routes[s] for s in SECTORS["healthcare"]} == {"direction-healthcare"}   # no fit: as before
    write_card(made["direction-all"], {"fusion": {"news": {"numeric": 1.0, "llm": 0.0}}})
    assert {trusted_routes(made)[s] for s in SECTORS["consumer"]} == {"direction-consumer"}  # nothing trusted


def test_refit_fusion_rewrites_each_cards_fit_on_its_held_out_part_and_the_routing(tmp_path):
    """The tiny model's shipped set, copied: every card gets a fusion fitted on the rows it was held out on
    (its symbols, the default tape's last 20%), with one bias per label; the routing is rewritten by the trust
    rule; the adapters' weights stay as they were. A card trained on another tape is refused."""
    import json
    import shutil

    from click.testing import CliRunner

    from agents.cli import cli
    from agents.lab.training import trusted_routes
    from inference.adapters.cards import read_card
    from inference.adapters.shipped import SHIPPED_DIR, load_routing
    from inference.adapters.train import WEIGHTS_NAME, write_card

    out = tmp_path / "tiny"
    shutil.copytree(SHIPPED_DIR / "tiny", out)
    weights = {p: p.read_bytes() for p in out.glob(f"*/{WEIGHTS_NAME}")}
    result = CliRunner().invoke(cli, ["adapters", "refit-fusion", "--model", "tiny", "--out", str(out), "--threads", "2"])
    assert result.exit_code == 0, result.output
    routing = load_routing(out)
    for name, folder in routing.adapters.items():
        card = read_card(folder)
        fit = card["fusion"]["fit"]["news"]
        assert len(card["fusion"]["news"]["bias"]) == 3, name
        if fit["trusted"]:               # a stack fit: its biases are fitted too (an untrusted one has none)
            assert any(b != 0 for b in card["fusion"]["news"]["bias"]), name
            assert card["fusion"]["news"] == fit["best"], name
        if name.startswith("direction-"):
            assert fit["rows"] == card["data"]["test_examples"], name     # its own held-out part, all with news
    assert routing.routes == trusted_routes(dict(routing.adapters))
    assert {p: p.read_bytes() for p in out.glob(f"*/{WEIGHTS_NAME}")} == weights
    card = read_card(out / "direction-all") | {"data": {"tape": "somewhere else"}}
    write_card(out / "direction-all", json.loads(json.dumps(card)))
    refused = CliRunner().invoke(cli, ["adapters", "refit-fusion", "--model", "tiny", "--out", str(out)])
    assert refused.exit_code != 0 and "not trained on the default tape" in refused.output
