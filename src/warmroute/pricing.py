"""Prices per model and the cost of one request, in xAI's units.

Prices are USD cents per 100 M tokens (so grok-3's $3.00/M input is 30,000); a cost is given in
ticks, 1 USD = 10^10 ticks, which makes one token at price p cost exactly p ticks. Cached prompt
tokens are billed at the cached price, the rest of the prompt at the input price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warmroute.types import Usage


@dataclass(frozen=True)
class ModelPrice:
    prompt_text_token_price: int = 20_000
    cached_prompt_token_price: int = 5_000
    completion_text_token_price: int = 50_000

    def cost_in_usd_ticks(self, usage: Usage) -> int:
        uncached = usage.prompt_tokens - usage.cached_tokens
        return (
            uncached * self.prompt_text_token_price
            + usage.cached_tokens * self.cached_prompt_token_price
            + usage.completion_tokens * self.completion_text_token_price
        )

    def saved_ticks(self, cached_tokens: int) -> int:
        """What caching saved: cached tokens at the input price minus what they cost."""
        return cached_tokens * (self.prompt_text_token_price - self.cached_prompt_token_price)

    @staticmethod
    def parse(data: Mapping[str, Any]) -> ModelPrice:
        allowed = set(ModelPrice.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown price fields {sorted(unknown)}; known: {sorted(allowed)}")
        price = ModelPrice(**{k: int(v) for k, v in data.items()})
        if min(vars(price).values()) < 0:
            raise ValueError("prices must not be negative")
        return price


DEFAULT_PRICE = ModelPrice()


def price_for(prices: Mapping[str, ModelPrice], model: str) -> ModelPrice:
    return prices.get(model, prices.get("*", DEFAULT_PRICE))
