"""Prompts: a news block (built when news arrives, so it can be cached) and a numeric tail.

The prompt is `prefix + tail`. The prefix depends only on the symbol and the news in it; the tail
holds what changes at every trigger (the time and the features) and ends where the model's next
token is one of the direction labels (" up", " down", " flat").
"""
from __future__ import annotations

import html
import re
from datetime import datetime, timezone

from agents.features import Features
from schemas import NewsItem
from schemas.units import NS_PER_S

MAX_HEADLINE_CHARS = 200
_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def sanitise_text(text: str, max_chars: int = MAX_HEADLINE_CHARS) -> str:
    """Strip markup and control characters, collapse white space, cap the length."""
    text = html.unescape(_TAG.sub(" ", text))
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


def clock(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / NS_PER_S, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def news_weight(age_ns: int, half_life_s: int) -> float:
    return 0.5 ** (age_ns / (half_life_s * NS_PER_S))


def news_block(symbol: str, news: tuple[NewsItem, ...]) -> str:
    lines = [f"Forecast for {symbol}.", "News:"]
    lines += [f"- {clock(n.ts_ns)} [{n.source}] {sanitise_text(n.headline)}" for n in news] or ["- none"]
    return "\n".join(lines) + "\n"


def news_age_words(age_ns: int) -> str:
    seconds = age_ns / NS_PER_S
    for limit, words in ((15, "just now"), (60, "under a minute ago"), (300, "minutes ago")):
        if seconds < limit:
            return words
    return "a while ago"


def move_words(ret: float, minute_vol: float) -> str:
    """A log return in words, against one minute's volatility (a small model reads words, not digits)."""
    z = ret / minute_vol if minute_vol > 0 else 0.0
    for limit, words in ((-3, "sharply lower"), (-1, "lower"), (1, "about flat"), (3, "higher")):
        if z < limit:
            return words
    return "sharply higher"


def numeric_tail(ts_ns: int, features: Features, news: tuple[NewsItem, ...], half_life_s: int,
                 horizon_s: int, ret_since_news: float | None = None) -> str:
    """What changes at every trigger: the time, the news weights and age, the move since the latest
    news (in words, against the per-minute volatility) and the market features."""
    weights = " ".join(f"{news_weight(ts_ns - n.ts_ns, half_life_s):.2f}" for n in news) or "-"
    spread = "n/a" if features.spread_bps is None else f"{features.spread_bps:.1f}bp"
    minute_vol = features.vol_per_sqrt_s * 60 ** 0.5
    latest = ""
    if news:
        since = "unknown" if ret_since_news is None else move_words(ret_since_news, minute_vol)
        latest = f"Latest news {news_age_words(ts_ns - news[-1].ts_ns)}; price since then {since}.\n"
    return (f"Now {clock(ts_ns)}. News weights: {weights}.\n{latest}"
            f"Market: ret1 {features.ret_short * 1e4:+.1f}bp ret5 {features.ret_long * 1e4:+.1f}bp "
            f"vol {minute_vol * 1e4:.1f}bp/min spread {spread} "
            f"trades {features.trades_short}.\n"
            f"Direction over the next {horizon_s}s (up, down or flat):")


def history_block(minute_returns: list[float | None]) -> str:
    """The deep tier's price history: one log return per minute, oldest first, in basis points."""
    moves = " ".join("n/a" if r is None else f"{r * 1e4:+.1f}" for r in minute_returns)
    return f"Price, last {len(minute_returns)} minutes (bp per minute, oldest first): {moves}.\n"


def build_prompt(symbol: str, ts_ns: int, features: Features, news: tuple[NewsItem, ...],
                 half_life_s: int, horizon_s: int, ret_since_news: float | None = None) -> str:
    return news_block(symbol, news) + numeric_tail(ts_ns, features, news, half_life_s, horizon_s, ret_since_news)
