"""The news screen's pure policy: blocked sources, sanitised text, and the headline key used to spot
the same story told twice (across sources or re-sent).

The key normalises a headline so that trivial differences vanish: markup and a leading tag
("UPDATE:", "BREAKING -", "[Reuters]", "ACME:") are dropped, then everything but letters and
digits, and the rest is lowercased and hashed (blake2b).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import OrderedDict

from agents.news_policy import NewsPolicy
from agents.prompt import sanitise_text
from schemas import NewsItem
from schemas.units import NS_PER_MS

KEY_BYTES = 16
LRU_ENTRIES = 100_000
MAX_LEAD_TAGS = 3
UNCAPPED_CHARS = 1 << 20
_SEP = r"(?:\s*[:|]|\s+[-–—]|[-–—]\s+)"   # "-" only with a space beside it: "US-China" is no tag
_KNOWN_TAG = re.compile(r"^\s*(?:(?:update|breaking|flash|alert|exclusive|corrected|correction|urgent)\s*\d*"
                        r"\s*[-–—:|]|[\[(][^\])]{1,30}[\])]" + _SEP + r"?)\s*", re.IGNORECASE)
_TICKER_TAG = re.compile(r"^\s*\$?(?P<ticker>[A-Z][A-Z0-9.]{0,24})" + _SEP + r"\s*")   # "ACME:" for ACME


class NewsRejected(ValueError):
    """A news item the screen does not forward; the caller dead-letters it with `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def drop_lead_tags(headline: str, symbols: tuple[str, ...] = ()) -> str:
    """Without leading tags: "UPDATE 2-", "BREAKING:", "[Reuters]", and a ticker of the item ("ACME:"
    for an item on ACME; "FED:" stays, or two central banks' news would read the same)."""
    for _ in range(MAX_LEAD_TAGS):
        match = _lead_tag(headline, symbols)
        if match is None:
            break
        headline = headline[match.end():]
    return headline


def _lead_tag(headline: str, symbols: tuple[str, ...]) -> re.Match | None:
    match = _KNOWN_TAG.match(headline)
    if match is None:
        match = _TICKER_TAG.match(headline)
        return match if match is not None and match["ticker"] in symbols else None
    return match


def normalise_headline(headline: str, symbols: tuple[str, ...] = ()) -> str:
    """Lowercase letters and digits only, after markup and leading tags are gone (kept if all is tags)."""
    text = sanitise_text(headline, UNCAPPED_CHARS)
    return _alnum(drop_lead_tags(text, symbols)) or _alnum(text)


def _alnum(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def headline_key(headline: str, symbols: tuple[str, ...] = ()) -> str:
    """The dedup key of a headline: blake2b of its normalised text."""
    key = normalise_headline(headline, symbols).encode()
    return hashlib.blake2b(key, digest_size=KEY_BYTES).hexdigest()


def dedup_keys(item: NewsItem) -> list[str]:
    """One key per symbol; the headline part in braces keeps them in one Redis Cluster hash slot."""
    key = headline_key(item.headline, item.symbols)
    return [f"{{{key}}}:{symbol}" for symbol in item.symbols]


def screen(item: NewsItem, policy: NewsPolicy) -> NewsItem:
    """The item with its text sanitised and capped; raises NewsRejected for a blocked source or a
    headline with nothing left. The source is kept as is: `policy.credibility(source)` weighs it."""
    if policy.blocked(item.source):
        raise NewsRejected("blocked_source", f"source {item.source!r} is blocked")
    headline = sanitise_text(item.headline, policy.max_headline_chars)
    if not headline:
        raise NewsRejected("empty_headline", "headline has no text once markup is stripped")
    body = None if item.body is None else sanitise_text(item.body, policy.max_body_chars) or None
    return dataclasses.replace(item, headline=headline, body=body)


class LocalSeen:
    """The same check as the Redis script, on a bounded LRU of (key, symbol) -> (ts_ms, id)."""

    def __init__(self, max_entries: int = LRU_ENTRIES) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[int, str]] = OrderedDict()

    def seen_before(self, keys: list[str], news_id: str, ts_ms: int, window_ms: int) -> str | None:
        for key in keys:
            seen = self.entries.get(key)
            if seen is not None and seen[1] != news_id and abs(ts_ms - seen[0]) <= window_ms:
                return seen[1]
        self.record(keys, news_id, ts_ms)
        return None

    def record(self, keys: list[str], news_id: str, ts_ms: int) -> None:
        for key in keys:
            self.entries[key] = (ts_ms, news_id)
            self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


class LocalNewsScreen:
    """The whole screen in one process, without Redis: what a replay of a tape must let through
    (`agents.offline`), and the same rules as `agents.news_dedup.NewsScreen`."""

    def __init__(self, policy: NewsPolicy, seen: LocalSeen | None = None) -> None:
        self.policy, self.seen = policy, seen or LocalSeen()

    def admit(self, item: NewsItem) -> NewsItem:
        clean = screen(item, self.policy)
        window_ms = self.policy.dedup_ttl_s * 1000
        original = self.seen.seen_before(dedup_keys(clean), clean.id, clean.ts_ns // NS_PER_MS, window_ms)
        if original is not None:
            raise duplicate(item, original, self.policy)
        return clean


def duplicate(item: NewsItem, original: str, policy: NewsPolicy) -> NewsRejected:
    return NewsRejected("duplicate", f"same headline as news {original!r} within {policy.dedup_ttl_s}s "
                                     f"for one of {list(item.symbols)}")
