"""Settings of the feature windows, triggers and prompts; read once at the process edge."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from schemas.units import NS_PER_S
from streams.settings import ROUTING_FILE_ENV, env_flag, read_routing_file



@dataclass(frozen=True, slots=True)
class AgentsConfig:
    cadence_s: int = 60              # a forecast per symbol at every multiple of this event time
    horizon_s: int = 60              # forecasts are about the move over the next horizon_s
    short_window_s: int = 60         # features: returns/volume over the last minute ...
    long_window_s: int = 300         # ... and over the last five minutes
    news_window_s: int = 1_800       # news older than this (event time) no longer counts
    news_half_life_s: int = 600      # weight of a news item halves every half-life (shown in the prompt)
    max_news_in_prompt: int = 5      # the base tier's (short) prompt
    deep_max_news: int = 10          # the deep tier's longer prompt: more news ...
    deep_history_min: int = 15       # ... and the price's last minutes, one return each
    flat_bps: float = 5.0            # |move| below this many basis points counts as flat
    momentum_coef: float = 0.0       # drift forecast = coef * short-window return (0: pure random walk)
    deadline_ms: int = 10_000        # a forecast later than this after its trigger is answered numeric-only
    allowed_lateness_s: int = 1_800  # news this far (event time) behind a symbol's ticks still counts
    tick_lateness_ms: int = 0        # ticks may arrive this much out of order; triggers wait as long
    warmup: bool = True              # ask the inference worker to prefill the known head of coming prompts
    warmup_lead_s: int = 30          # ... of a cadence trigger this long (event time) before it
    max_prompt_chars: int = 6_000    # longer prompts drop their oldest news first (recorded in the request)
    news_grace_ms: int = 500         # without news watermarks, a trigger waits this long (wall) for news
    news_idle_ms: int = 30_000       # watermarks absent this long (wall) count as a feed without them
    adapters: dict[str, str] = field(default_factory=dict)  # symbol -> LoRA adapter name
    default_adapter: str | None = None

    def __post_init__(self) -> None:
        for name in ("cadence_s", "horizon_s", "short_window_s", "long_window_s", "news_window_s",
                     "news_half_life_s", "max_news_in_prompt", "deadline_ms", "allowed_lateness_s",
                     "max_prompt_chars", "deep_max_news", "deep_history_min"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.short_window_s > self.long_window_s:
            raise ValueError("short_window_s must not exceed long_window_s")
        if min(self.news_grace_ms, self.news_idle_ms, self.tick_lateness_ms, self.warmup_lead_s) < 0:
            raise ValueError("news_grace_ms, news_idle_ms, tick_lateness_ms and warmup_lead_s must be >= 0")
        if self.flat_bps < 0:
            raise ValueError("flat_bps must be >= 0")

    @property
    def cadence_ns(self) -> int:
        return self.cadence_s * NS_PER_S

    def adapter_for(self, symbol: str) -> str | None:
        return self.adapters.get(symbol, self.default_adapter)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AgentsConfig:
        """FINLLM_CADENCE_S, FINLLM_HORIZON_S, FINLLM_FLAT_BPS, FINLLM_DEADLINE_MS, ...; the routes of
        FINLLM_ROUTING_FILE (an adapter set's routing.json), then FINLLM_ADAPTERS=SYM:name,... and
        FINLLM_DEFAULT_ADAPTER over them."""
        env = os.environ if env is None else env
        kw: dict = {}
        if env.get(ROUTING_FILE_ENV):
            routing = read_routing_file(env[ROUTING_FILE_ENV])
            kw["adapters"], kw["default_adapter"] = dict(routing["routes"]), routing.get("default")
        for var, name, cast in (("FINLLM_CADENCE_S", "cadence_s", int), ("FINLLM_HORIZON_S", "horizon_s", int),
                                ("FINLLM_FLAT_BPS", "flat_bps", float), ("FINLLM_DEADLINE_MS", "deadline_ms", int),
                                ("FINLLM_DEFAULT_ADAPTER", "default_adapter", str),
                                ("FINLLM_ALLOWED_LATENESS_S", "allowed_lateness_s", int),
                                ("FINLLM_NEWS_GRACE_MS", "news_grace_ms", int),
                                ("FINLLM_NEWS_IDLE_MS", "news_idle_ms", int),
                                ("FINLLM_TICK_LATENESS_MS", "tick_lateness_ms", int),
                                ("FINLLM_WARMUP_LEAD_S", "warmup_lead_s", int),
                                ("FINLLM_MAX_PROMPT_CHARS", "max_prompt_chars", int),
                                ("FINLLM_DEEP_MAX_NEWS", "deep_max_news", int),
                                ("FINLLM_DEEP_HISTORY_MIN", "deep_history_min", int)):
            if env.get(var):
                kw[name] = cast(env[var])
        kw["warmup"] = env_flag(env, "FINLLM_WARMUP", True)
        if env.get("FINLLM_ADAPTERS"):
            kw["adapters"] = dict(pair.split(":", 1) for pair in env["FINLLM_ADAPTERS"].split(",") if pair)
        return cls(**kw)
