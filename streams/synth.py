"""Synthetic tapes: market ticks with volatility clusters and news that explains some jumps.

Model, per symbol, on a one-second grid:
- diffusive log returns with GARCH(1,1) variance (volatility clusters);
- jumps, each announced by a news item 2-45 s before it, with the headline's sign and a size
  of several per-minute volatilities; the rest of the news is noise (no jump). The news rate and
  the share that explains a jump are set so that news carries forecastable signal over a 60 s
  horizon: with the earlier setting (0.2 items per symbol-minute, half explaining, 5-120 s delays)
  even a forecaster told each headline's true sentiment added only ~0.04 MCC to the numeric one
  (bench/RESULTS.md, "Forecast quality");
- trades (Poisson per second) at the bid or ask, quotes (Poisson per second) around the mid with a
  spread that widens with volatility, prices in cents, never crossed.
Same arguments give the same frames and, once written, the same bytes.

Regenerate the bundled sample: python -m streams.synth streams/data/sample_tape
"""
from __future__ import annotations

import argparse
import math
import pathlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from streams.tape import NEWS_SCHEMA, NS_PER_S, TICK_SCHEMA, TRUTH_SCHEMA, Tape

START_NS = 1_767_623_400 * NS_PER_S  # 2026-01-05 14:30:00 UTC, a Monday's US open
SECONDS_PER_YEAR = 252 * 6.5 * 3600
SAMPLE_SEED, SAMPLE_SYMBOLS, SAMPLE_MINUTES = 7, 4, 30.0

# ticker:company name:sector; the sectors group the shipped LoRA adapters (agents/lab/training.py)
_COMPANY_ROWS: tuple[tuple[str, str, str], ...] = tuple(
    tuple(entry.split(":")) for entry in (  # type: ignore[misc]
        "ACME:Acme Corp:industrials", "BOLT:Bolt Dynamics:technology", "CRUX:Crux Therapeutics:healthcare",
        "DYNO:Dyno Motors:consumer", "EMBR:Ember Energy:industrials", "FLUX:Flux Semiconductor:technology",
        "GRID:Gridline Utilities:industrials", "HALO:Halo Aerospace:industrials", "IONX:Ionix Batteries:technology",
        "JADE:Jade Retail Group:consumer", "KITE:Kite Logistics:industrials", "LUMO:Lumo Lighting:technology",
        "MESA:Mesa Minerals:industrials", "NOVA:Nova Biotech:healthcare", "ORBT:Orbital Networks:technology",
        "PIKE:Pike Financial:consumer", "QUIL:Quill Software:technology", "RIFT:Rift Gaming:technology",
        "SAGE:Sage Health:healthcare", "TIDE:Tide Shipping:industrials", "UMBR:Umbra Security:technology",
        "VALE:Vale Foods:consumer", "WISP:Wisp Telecom:technology", "XENO:Xeno Pharmaceuticals:healthcare",
        "YARD:Yardstick Analytics:technology", "ZEST:Zest Beverages:consumer", "ARCX:Arcadia Robotics:technology",
        "BRIO:Brio Apparel:consumer", "CASK:Cask Brewing:consumer", "DUNE:Dune Oil & Gas:industrials",
        "ECHO:Echo Media:technology", "FERN:Fern Agritech:healthcare", "GLOW:Glow Cosmetics:consumer",
        "HIVE:Hive Cloud:technology", "IRIS:Iris Optics:technology", "JOLT:Jolt Payments:technology",
        "KEEL:Keel Marine:industrials", "LYNX:Lynx Cybernetics:technology", "MOSS:Moss Timber:industrials",
        "NEXO:Nexo Insurance:consumer", "OPAL:Opal Jewelers:consumer", "PRSM:Prism Displays:technology",
        "QUAY:Quay Real Estate:consumer", "ROVR:Rover Automotive:consumer", "SOLR:Solaris Power:industrials",
        "TRAK:Trak Railways:industrials", "UNIT:Unity Hospitals:healthcare", "VRTX:Vortex Chemicals:industrials",
        "WAVE:Wave Wireless:technology", "XYLO:Xylo Instruments:technology", "YETI:Yeti Outdoor:consumer",
        "ZINC:Zinc Metals:industrials", "ATLS:Atlas Freight:industrials", "BEAM:Beam Lasers:technology",
        "CORE:Core Materials:industrials", "DART:Dart Airlines:consumer", "EDGE:Edge Computing:technology",
        "FORT:Fort Bank:consumer", "GUST:Gust Wind:industrials", "HELX:Helix Genomics:healthcare",
    )
)
COMPANIES: tuple[tuple[str, str], ...] = tuple((ticker, name) for ticker, name, _ in _COMPANY_ROWS)
SECTOR_OF: dict[str, str] = {ticker: sector for ticker, _, sector in _COMPANY_ROWS}
SOURCES = ("newswire", "wire2", "filings", "blog", "social")
EXPLAINING_SOURCE_WEIGHTS = (0.4, 0.3, 0.2, 0.05, 0.05)
NOISE_SOURCE_WEIGHTS = (0.15, 0.15, 0.1, 0.3, 0.3)

HEADLINES: dict[int, tuple[str, ...]] = {
    1: ("{NAME} beats estimates, raises guidance", "{NAME} reports record quarterly revenue",
        "{NAME} announces $2B share buyback", "{NAME} upgraded to buy on strong demand",
        "{NAME} wins multi-year government contract",
        "{NAME} wins regulatory approval for flagship product",
        "{NAME} wins major supply deal with {OTHER}", "{NAME} to acquire {OTHER} unit at a discount"),
    -1: ("{NAME} misses on revenue, cuts outlook", "{NAME} CEO resigns amid accounting probe",
         "{NAME} recalls flagship product over safety concerns",
         "{NAME} downgraded to sell on weak demand",
         "{NAME} warns of surprise quarterly loss", "Regulators open investigation into {NAME}",
         "{NAME} loses key customer {OTHER}", "{OTHER} sues {NAME} over patent infringement"),
    0: ("{NAME} to present at industry conference", "{NAME} schedules quarterly earnings call",
        "{NAME} names new head of investor relations", "{NAME} files routine annual report",
        "{NAME} to hold annual shareholder meeting", "{NAME} moves headquarters within the same city",
        "{NAME} and {OTHER} executives to share conference panel",
        "{NAME} and {OTHER} extend partnership on unchanged terms"),
}
BODIES: dict[int, tuple[str, ...]] = {
    1: ("{NAME} said demand was ahead of plan across all regions.",
        "Analysts called the update a clear positive for {NAME}'s margins."),
    -1: ("{NAME} cited softer demand and rising costs.",
         "Analysts said the news raises doubts about {NAME}'s targets."),
    0: ("The company gave no update to its outlook.", "No financial terms were disclosed."),
}


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """Knobs of the generator; ranges are (low, high) drawn uniformly per symbol or per event."""

    annual_vol: tuple[float, float] = (0.2, 0.5)
    garch_alpha: float = 0.08
    garch_beta: float = 0.91
    start_price: tuple[float, float] = (20.0, 300.0)
    spread_bps: tuple[float, float] = (2.0, 4.0)
    trades_per_s: tuple[float, float] = (1.0, 2.0)
    quotes_per_s: float = 2.0
    news_per_symbol_minute: float = 0.4
    explaining_share: float = 0.7
    pair_share: float = 0.2
    body_share: float = 0.6
    jump_delay_s: tuple[int, int] = (2, 45)
    jump_minute_vols: tuple[float, float] = (5.0, 9.0)


@dataclass(frozen=True, slots=True)
class Market:
    """Per-second state, arrays [S seconds, N symbols], plus per-symbol constants [N]."""

    mid: np.ndarray
    vol_ratio: np.ndarray  # current / base per-second volatility
    spread_bps: np.ndarray  # [N]
    trades_per_s: np.ndarray  # [N]


@dataclass(frozen=True, slots=True)
class NewsPlan:
    """One entry per news item, arrays [M]; pair_at is an index into symbols or equal to primary."""

    offset_ns: np.ndarray
    primary: np.ndarray
    pair_at: np.ndarray
    sentiment: np.ndarray
    explains: np.ndarray
    jump_second: np.ndarray
    jump_return: np.ndarray


def synth_tape(symbols: int, minutes: float, seed: int, start_ns: int = START_NS,
               config: SynthConfig = SynthConfig(), news: bool = True) -> Tape:
    """A synthetic tape of `symbols` tickers (COMPANIES order) over `minutes`, with truth.

    `news` False: the same market (same seed, same ticks, jumps included) without its news and truth:
    bars no headline explains, where a language model reading the prompts has nothing to go on."""
    if not 1 <= symbols <= len(COMPANIES):
        raise ValueError(f"symbols must be in 1..{len(COMPANIES)}, got {symbols}")
    rng = np.random.default_rng(seed)
    seconds = max(1, math.ceil(minutes * 60))
    base_vol_s = rng.uniform(*config.annual_vol, symbols) / math.sqrt(SECONDS_PER_YEAR)
    plan = _plan_news(rng, symbols, seconds, base_vol_s * math.sqrt(60), config)
    market = _simulate_market(rng, seconds, base_vol_s, _jump_grid(plan, seconds, symbols), config)
    ticks = pl.concat([_trades(rng, market, start_ns), _quotes(rng, market, config, start_ns)])
    news_frame, truth = _news_frames(rng, plan, seed, start_ns, config)
    if not news:
        return Tape.from_frames(ticks, news_frame.head(0), truth.head(0), origin=f"synth(seed={seed}, no news)")
    return Tape.from_frames(ticks, news_frame, truth, origin=f"synth(seed={seed})")


def write_synth_tape(path: pathlib.Path | str, symbols: int, minutes: float, seed: int, news: bool = True) -> Tape:
    tape = synth_tape(symbols, minutes, seed, news=news)
    tape.write(path)
    return tape


def sample_tape_path() -> pathlib.Path:
    """The bundled tape: SAMPLE_SYMBOLS symbols, SAMPLE_MINUTES minutes, seed SAMPLE_SEED."""
    return pathlib.Path(__file__).parent / "data" / "sample_tape"


def _plan_news(rng: np.random.Generator, symbols: int, seconds: int, minute_vol: np.ndarray,
               config: SynthConfig) -> NewsPlan:
    """Which news comes when, about whom, with what sentiment, and which jump it announces."""
    count = int(rng.poisson(config.news_per_symbol_minute * symbols * seconds / 60))
    fits_jump = seconds > config.jump_delay_s[1] + 2
    explains = np.arange(count) < (round(config.explaining_share * count) if fits_jump else 0)
    primary = rng.integers(0, symbols, count)
    paired = (rng.random(count) < config.pair_share) & (symbols > 1)
    pair_at = np.where(paired, (primary + rng.integers(1, max(symbols, 2), count)) % symbols, primary)
    offset_ns, jump_second = _news_timing(rng, explains, seconds, config.jump_delay_s)
    signs = rng.choice([-1, 1], count)
    sentiment = np.where(explains | (rng.random(count) < 0.5), signs, 0)
    jump_size = rng.uniform(*config.jump_minute_vols, count) * minute_vol[primary]
    jump_return = np.where(explains, sentiment * jump_size, 0.0)
    return NewsPlan(offset_ns, primary, pair_at, sentiment, explains, jump_second, jump_return)


def _news_timing(rng: np.random.Generator, explains: np.ndarray, seconds: int,
                 jump_delay_s: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(news offset_ns [M], jump second [M]); an explaining item leaves room for its jump."""
    low_delay_s, high_delay_s = jump_delay_s
    news_window_s = np.where(explains, seconds - high_delay_s - 1, seconds)
    offset_ns = (rng.random(explains.size) * news_window_s * NS_PER_S).astype(np.int64)
    delay_ns = rng.integers(low_delay_s, high_delay_s, explains.size) * NS_PER_S
    jump_second = -(-(offset_ns + delay_ns) // NS_PER_S)  # ceil: the jump starts on a second
    return offset_ns, jump_second


def _jump_grid(plan: NewsPlan, seconds: int, symbols: int) -> np.ndarray:
    """Jump log returns [S, N], each added at the second it happens."""
    grid = np.zeros((seconds, symbols))
    at = plan.explains
    np.add.at(grid, (plan.jump_second[at], plan.primary[at]), plan.jump_return[at])
    return grid


def _simulate_market(rng: np.random.Generator, seconds: int, base_vol_s: np.ndarray,
                     jumps: np.ndarray, config: SynthConfig) -> Market:
    """GARCH(1,1) diffusion on the second grid plus `jumps` [S, N]; jumps do not feed the variance."""
    alpha, beta = config.garch_alpha, config.garch_beta
    omega = base_vol_s**2 * (1 - alpha - beta)
    shocks = rng.standard_normal(jumps.shape)
    variance = np.empty(jumps.shape)
    returns = np.empty(jumps.shape)
    variance_now = base_vol_s**2
    for second in range(seconds):
        variance[second] = variance_now
        returns[second] = np.sqrt(variance_now) * shocks[second]
        variance_now = omega + alpha * returns[second] ** 2 + beta * variance_now
    start_price = rng.uniform(*config.start_price, base_vol_s.shape)
    mid = start_price * np.exp(np.cumsum(returns + jumps, axis=0))
    vol_ratio = np.sqrt(variance) / base_vol_s
    spread_bps = rng.uniform(*config.spread_bps, base_vol_s.shape)
    trades_per_s = rng.uniform(*config.trades_per_s, base_vol_s.shape)
    return Market(mid, vol_ratio, spread_bps, trades_per_s)


def _arrivals(rng: np.random.Generator, rate_per_s: np.ndarray, market: Market,
              start_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poisson arrivals per second and symbol: (second [K], symbol [K], ts_ns [K])."""
    seconds, symbols = market.mid.shape
    counts = rng.poisson(np.broadcast_to(rate_per_s, (seconds, symbols)))
    cell = np.repeat(np.arange(seconds * symbols), counts.ravel())
    second, symbol = cell // symbols, cell % symbols
    ts_ns = start_ns + second * NS_PER_S + rng.integers(0, NS_PER_S, cell.size)
    return second, symbol, ts_ns


def _book(market: Market, second: np.ndarray, symbol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bid [K], ask [K]) in cents around the mid; spread widens with volatility, ask > bid."""
    mid = market.mid[second, symbol]
    widening = 0.5 + 0.5 * market.vol_ratio[second, symbol]
    half_spread = market.spread_bps[symbol] * widening / 2e4
    bid = np.floor(mid * (1 - half_spread) * 100) / 100
    ask = np.maximum(np.ceil(mid * (1 + half_spread) * 100) / 100, bid + 0.01)
    return np.maximum(bid, 0.01), ask


def _trades(rng: np.random.Generator, market: Market, start_ns: int) -> pl.DataFrame:
    second, symbol, ts_ns = _arrivals(rng, market.trades_per_s, market, start_ns)
    bid, ask = _book(market, second, symbol)
    buys = rng.random(second.size) < 0.5
    size = np.round(np.exp(rng.normal(4.5, 1.0, second.size))) + 1
    return _tick_frame(symbol, ts_ns, "trade", {"price": np.where(buys, ask, bid), "size": size})


def _quotes(rng: np.random.Generator, market: Market, config: SynthConfig,
            start_ns: int) -> pl.DataFrame:
    second, symbol, ts_ns = _arrivals(rng, np.array(config.quotes_per_s), market, start_ns)
    bid, ask = _book(market, second, symbol)
    bid_sz, ask_sz = (100.0 * (1 + rng.geometric(0.3, (2, second.size))))
    prices = {"bid_px": bid, "bid_sz": bid_sz, "ask_px": ask, "ask_sz": ask_sz}
    return _tick_frame(symbol, ts_ns, "quote", prices)


def _tick_frame(symbol: np.ndarray, ts_ns: np.ndarray, kind: str,
                values: dict[str, np.ndarray]) -> pl.DataFrame:
    tickers = pl.Series("symbol", [ticker for ticker, _ in COMPANIES])
    kinds = pl.repeat(kind, ts_ns.size, eager=True)
    columns = {"symbol": tickers.gather(symbol), "ts_ns": ts_ns, "kind": kinds}
    frame = pl.DataFrame(columns).with_columns(
        pl.Series(name, values[name]) if name in values else pl.lit(None).alias(name)
        for name in ("price", "size", "bid_px", "bid_sz", "ask_px", "ask_sz"))
    return frame.cast(TICK_SCHEMA)  # type: ignore[arg-type]


def _news_frames(rng: np.random.Generator, plan: NewsPlan, seed: int, start_ns: int,
                 config: SynthConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(news, truth) frames, in event-time order, ids numbered in that order."""
    order = np.argsort(plan.offset_ns, kind="stable")
    rows = [_news_row(rng, plan, at, config) for at in order]
    ids = [f"synth-{seed}-{number:05d}" for number in range(len(rows))]
    texts = {key: [row[key] for row in rows] for key in ("source", "headline", "body", "symbols")}
    ts_ns = start_ns + plan.offset_ns[order]
    news = pl.DataFrame({"id": ids, "ts_ns": ts_ns, **texts}, schema=NEWS_SCHEMA)
    return news, _truth_frame(plan, order, ids, start_ns)


def _truth_frame(plan: NewsPlan, order: np.ndarray, ids: list[str], start_ns: int) -> pl.DataFrame:
    explains = plan.explains[order]
    tickers = [COMPANIES[primary][0] for primary in plan.primary[order]]
    return pl.DataFrame({
        "news_id": ids, "sentiment": plan.sentiment[order],
        "jump_symbol": _where(explains, tickers),
        "jump_ts_ns": _where(explains, (start_ns + plan.jump_second[order] * NS_PER_S).tolist()),
        "jump_return": _where(explains, plan.jump_return[order].tolist()),
    }, schema=TRUTH_SCHEMA)


def _where(mask: np.ndarray, values: list) -> list:
    """values where mask is set, None elsewhere."""
    return [value if keep else None for keep, value in zip(mask.tolist(), values)]


def _news_row(rng: np.random.Generator, plan: NewsPlan, at: int, config: SynthConfig) -> dict:
    """source, headline, body and symbols of news item `at` of the plan."""
    primary, other = int(plan.primary[at]), int(plan.pair_at[at])
    sentiment = int(plan.sentiment[at])
    templates = [t for t in HEADLINES[sentiment] if ("{OTHER}" in t) == (other != primary)]
    names = {"NAME": COMPANIES[primary][1], "OTHER": COMPANIES[other][1]}
    weights = EXPLAINING_SOURCE_WEIGHTS if plan.explains[at] else NOISE_SOURCE_WEIGHTS
    source = SOURCES[rng.choice(len(SOURCES), p=weights)]
    headline = templates[rng.integers(len(templates))].format(**names)
    body_template = BODIES[sentiment][rng.integers(len(BODIES[sentiment]))]
    body = body_template.format(**names) if rng.random() < config.body_share else None
    tickers = [COMPANIES[primary][0]] + ([COMPANIES[other][0]] if other != primary else [])
    return {"source": source, "headline": headline, "body": body, "symbols": tickers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic tape folder.")
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--symbols", type=int, default=SAMPLE_SYMBOLS)
    parser.add_argument("--minutes", type=float, default=SAMPLE_MINUTES)
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED)
    args = parser.parse_args(argv)
    write_synth_tape(args.out, args.symbols, args.minutes, args.seed)


if __name__ == "__main__":
    main()
