"""Predictive buffering: warm-ups carry the known head of a coming trigger's prompt, sent ahead of it."""
import pytest

from agents.config import AgentsConfig
from agents.processor import Processor
from schemas import NewsItem, Trade

S = 1_000_000_000
T0 = 1_767_623_400 * S  # 2026-01-05 14:30:00 UTC, a multiple of 60 s
CFG = AgentsConfig(cadence_s=60, warmup_lead_s=10, news_grace_ms=0, news_idle_ms=0)


def trade(ts_s: float, price: float = 100.0) -> Trade:
    return Trade("ACME", T0 + int(ts_s * S), price, 1.0)


def news(nid: str, ts_s: float, headline: str = "ACME wins a contract") -> NewsItem:
    return NewsItem(nid, T0 + int(ts_s * S), "wire", headline, ("ACME",))


def fire(p: Processor, *ticks: Trade) -> list:
    return [f for t in ticks for f in p.on_tick(t, 0)] + p.release_all(10**19)


def test_cadence_warmup_goes_once_within_the_lead_and_heads_the_trigger_prompt():
    p = Processor(CFG)
    fire(p, trade(1), trade(30))
    assert p.due_warmup("ACME", 5) is None                      # 30 s before T0+60: not yet
    fire(p, trade(50.5))
    warm = p.due_warmup("ACME", 5)
    assert warm.kind == "warmup" and warm.ts_ns == T0 + 60 * S
    assert p.due_warmup("ACME", 6) is None                      # once per trigger
    fired = fire(p, trade(55, 101.0), trade(61, 102.0))
    request = p.request(next(f for f in fired if f.ts_ns == T0 + 60 * S), 7)
    assert request.prompt.startswith(warm.prompt) and "Now 2026-01-05 14:31:00" in warm.prompt
    assert warm.prompt.endswith("Market: ret1")                 # nothing the market at T decides (no news here)


def test_warmup_head_ends_where_the_market_at_t_starts():
    p = Processor(CFG)
    fire(p, trade(1), trade(30))
    p.on_news(news("n1", 31), "ACME", 0)
    fire(p, trade(50.5))
    warm = p.due_warmup("ACME", 5)
    fired = fire(p, trade(55, 101.0), trade(61, 102.0))
    request = p.request(next(f for f in fired if f.ts_ns == T0 + 60 * S), 7)
    assert request.prompt.startswith(warm.prompt) and "ACME wins a contract" in warm.prompt
    assert "News weights: 0.97.\n" in warm.prompt                # the news's weight and age at T are known ahead
    assert warm.prompt.endswith("Latest news under a minute ago; price since then")
    tail = request.prompt[len(warm.prompt):]                    # the move since the news, the market, the question
    assert tail.startswith(" ") and tail.count("\n") == 2 and "Market: ret1" in tail


def test_news_after_the_warmup_warms_the_coming_cadence_trigger_again():
    p = Processor(CFG)
    fire(p, trade(1), trade(50.5))
    first = p.due_warmup("ACME", 5)
    assert "ACME wins a contract" not in first.prompt
    p.on_news(news("n1", 52), "ACME", 0)
    fired = fire(p, trade(53, 101.0))
    news_trigger = next(f for f in fired if f.trigger == "news")
    again = p.rewarm_after(news_trigger, 6)
    assert again.kind == "warmup" and again.ts_ns == first.ts_ns and "ACME wins a contract" in again.prompt
    cadence = next(f for f in fire(p, trade(61, 102.0)) if f.trigger == "cadence")
    assert p.request(cadence, 7).prompt.startswith(again.prompt)
    assert p.rewarm_after(cadence, 8) is None                   # only news triggers
    assert p.rewarm_after(news_trigger, 9) is None              # that cadence trigger has fired


def test_news_before_any_warmup_sends_none():
    p = Processor(CFG)
    fire(p, trade(1), trade(20))
    p.on_news(news("n1", 21), "ACME", 0)
    news_trigger = next(f for f in fire(p, trade(22)) if f.trigger == "news")
    assert p.rewarm_after(news_trigger, 5) is None


def test_worker_without_prefix_caching_drops_warmups(monkeypatch):
    """FINLLM_PREFIX_CACHING=0 (the benchmark's unbuffered baseline): nothing is cached, so warm-ups are not
    queued; forecasts pass through."""
    import time

    from inference.fusion import FusionPolicy
    from inference.worker import InferenceWorker, WorkerConfig, configured_scorer
    from streams.settings import KafkaSettings

    monkeypatch.setenv("FINLLM_PREFIX_CACHING", "off")
    monkeypatch.setenv("FINLLM_ENGINE", "paged")
    cfg = WorkerConfig.from_env()
    scorer = configured_scorer(cfg)
    assert not cfg.prefix_caching and not scorer.engine.config.enable_prefix_caching
    p = Processor(CFG)
    fire(p, trade(1), trade(52))
    warm = p.due_warmup("ACME", time.time_ns())
    request = p.request(next(f for f in fire(p, trade(55), trade(61)) if f.trigger == "cadence"), time.time_ns())
    worker = InferenceWorker(KafkaSettings("127.0.0.1:9"), None, scorer, cfg, FusionPolicy())
    assert worker._queue_warmups([warm, request]) == [request] and not worker.warm_queue


def test_no_warmups_when_buffering_is_off():
    p = Processor(AgentsConfig(cadence_s=60, warmup=False))
    fire(p, trade(1), trade(55))
    assert p.due_warmup("ACME", 5) is None


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_inference_worker_prefills_queued_warmups_and_drops_superseded_ones(chat):
    """The warm-up caches every token of the head, the partial last block too; in a chat template as well
    (the warm-up stops where the head ends, not at the turn's end the template would add after it)."""
    import asyncio
    import time

    from inference.scorers.engine import EngineScorer
    from inference.fusion import FusionPolicy
    from inference.checkpoints import PromptSettings, resolve_model_dir
    from inference.scorers.base import ScoreItem
    from inference.scorers.prompting import PromptFormat
    from inference.worker import InferenceWorker, WorkerConfig
    from streams.settings import KafkaSettings

    p = Processor(CFG)
    fire(p, trade(1), trade(52))
    warm = p.due_warmup("ACME", time.time_ns())
    request = p.request(next(f for f in fire(p, trade(55), trade(61)) if f.trigger == "cadence"), time.time_ns())
    def make_scorer() -> EngineScorer:
        scorer = EngineScorer(str(resolve_model_dir("tiny")))
        if chat:   # the real model's layout: a system turn, the prompt as the user turn, an answer prefix
            scorer.prompt_format = PromptFormat(scorer.tokenizer, PromptSettings(chat=True, system="Be brief.",
                                                                                 answer_prefix="Direction:"))
        return scorer

    scorer = make_scorer()
    worker = InferenceWorker(KafkaSettings("127.0.0.1:9"), None, scorer, WorkerConfig(), FusionPolicy())
    assert worker._queue_warmups([warm]) == [] and list(worker.warm_queue) == [warm]
    asyncio.run(worker._warm_up_queued())                       # what the worker does when nothing is due
    assert worker.warmups == 1 and not worker.warm_queue
    blocks = scorer.engine.scheduler.block_manager
    hits = blocks.prefix_hit_tokens
    item = ScoreItem(request.id, request.prompt, None, None)
    warmed = scorer.score([item])
    assert warmed == make_scorer().score([item])                 # buffering changes no forecast: same bits cold
    head = scorer.prompt_format.encode_head(warm.prompt)        # all of them: the head's partial last block too
    head_tokens = len(head)
    assert scorer.encode(request.prompt)[:head_tokens] == head
    assert blocks.prefix_hit_tokens - hits == head_tokens > scorer.engine.config.block_size
    assert worker._queue_warmups([warm, request]) == [request] and not worker.warm_queue   # its trigger came
