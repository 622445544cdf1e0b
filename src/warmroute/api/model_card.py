"""The OpenAI-style model card that `GET /v1/models` lists, on engines and on the gateway."""

from __future__ import annotations

from typing import Any


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "warmroute"}
