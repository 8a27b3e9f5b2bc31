"""Wire records shared by every part of the pipeline. Imports nothing of ours."""
from schemas.codec import encode, parse_object
from schemas.deadletter import DeadLetter, decode_deadletter
from schemas.errors import SchemaError
from schemas.forecast import (DIRECTIONS, Forecast, InferenceRequest, Latency, Probs, decode_forecast,
                              decode_request, forecast_id, is_later_revision)
from schemas.news import NewsItem, NewsWatermark, decode_news, decode_news_event
from schemas.ticks import Quote, Tick, Trade, decode_tick, decode_ticks, tick_from_obj

__all__ = [
    "DIRECTIONS", "DeadLetter", "Forecast", "InferenceRequest", "Latency", "NewsItem", "Probs", "Quote",
    "SchemaError", "Tick", "Trade", "decode_deadletter", "decode_forecast", "decode_news", "decode_news_event", "NewsWatermark", "decode_request",
    "decode_tick", "decode_ticks", "encode", "forecast_id", "is_later_revision", "parse_object", "tick_from_obj",
]
