"""Explain a forecast: the prompt that asks the model why it forecast what it did.

The inference worker keeps, beside each symbol's latest forecast in Redis, the prompt the forecast was
scored on (`streams.latest`). The explanation prompt is that prompt, the forecast's answer (its direction,
as the model's label word) and a further question asking for a short explanation from the news and
market data above, in the model's own prompt format (`PromptFormat.render_follow_up`: its chat template
when it has one). Nothing else goes in: no news or prices newer than the forecast (no look-ahead), only
what the forecast saw and what it published.

A model this small writes fluent text that can state figures its inputs never held ("down 41% in 24
hours"). `ungrounded_numbers` lists the numbers of an explanation that appear nowhere in what the model was
given; the API returns them with the explanation (`grounding`), and `finllm explain` prints them as a
warning, so no reader takes an invented figure for data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inference.api.protocol import ApiError
from inference.scorers.prompting import PromptFormat
from schemas import DIRECTIONS


@dataclass(frozen=True, slots=True)
class Explainable:
    """A symbol's latest forecast (its record, as published) and the prompt it was scored on."""

    symbol: str
    forecast: dict[str, Any]
    prompt: str

    @classmethod
    def of(cls, symbol: str, forecast: dict[str, Any] | None, prompt: str | None) -> "Explainable":
        """From what Redis holds; 404 (OpenAI shape) when there is no forecast of the symbol or no prompt
        was kept with it (a worker of an older version wrote it)."""
        if forecast is None:
            raise ApiError(404, f"no forecast for {symbol} yet", param="symbol", code="forecast_not_found")
        if not prompt:
            raise ApiError(404, f"the latest forecast of {symbol} ({forecast.get('id')}) was stored without its "
                           "prompt; the next one will have it", param="symbol", code="prompt_not_found")
        if forecast.get("direction") not in DIRECTIONS:
            raise ApiError(500, f"the latest forecast of {symbol} has no valid direction")
        return cls(symbol, forecast, prompt)

    @property
    def adapter(self) -> str | None:
        return self.forecast.get("adapter")

    def question(self) -> str:
        f = self.forecast
        probs = ", ".join(f"{d} {float(f[f'p_{d}']):.0%}" for d in DIRECTIONS)
        return (f"Your forecast for {self.symbol} is {f['direction']} ({probs}). In two or three sentences, "
                "explain this forecast using only the news and market data above.")

    def prompt_text(self, prompt_format: PromptFormat) -> str:
        """The explanation prompt, in the model's prompt format."""
        return prompt_format.render_follow_up(self.prompt, self.forecast["direction"], self.question())


NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*")


def _numbers(text: str) -> set[str]:
    """The numbers in `text`, normalised: thousands separators and signs dropped, trailing zeros of decimals."""
    out = set()
    for raw in NUMBER.findall(text):
        digits = raw.lstrip("+-").replace(",", "")
        out.add(digits.rstrip("0").rstrip(".") if "." in digits else digits)
    return out


def ungrounded_numbers(explanation: str, source: str) -> list[str]:
    """The numbers of `explanation` (in order of appearance, each once) found nowhere in `source`, what the
    model was given: its prompt, the forecast and the question. Empty: every figure it states is grounded."""
    known, seen, out = _numbers(source), set(), []
    for number in NUMBER.findall(explanation):
        key = next(iter(_numbers(number)))
        if key not in known and key not in seen:
            seen.add(key)
            out.append(number.lstrip("+"))
    return out
