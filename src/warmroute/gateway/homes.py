"""Conversation homes: (tenant, conversation id) → the engine that holds the conversation's KV.

A conversation id means something only within its tenant: two tenants that use the same id have
two conversations, each with its own home, and neither can move or load the other's. The table
is bounded twice, least recently used out first: at most `per_tenant` conversations of one
tenant (so one tenant cannot crowd the others out) and `total` of all. How many conversations
each engine is home to is kept as they move (`per_engine`: the operators' engine report asks
every 2 s, and counting 200,000 homes on each call took 60 ms of the event loop).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

DEFAULT_MAX_CONVERSATIONS = 1_000_000
DEFAULT_MAX_PER_TENANT = 250_000


class HomeTable:
    def __init__(self, total: int = DEFAULT_MAX_CONVERSATIONS,
                 per_tenant: int = DEFAULT_MAX_PER_TENANT) -> None:
        if total < 1 or per_tenant < 1:
            raise ValueError("home tables hold at least one conversation")
        self.total = total
        self.per_tenant = per_tenant
        self._tenants: dict[str, OrderedDict[str, str]] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._counts: dict[str, int] = {}  # engine → conversations it is home to

    def __len__(self) -> int:
        return len(self._order)

    def get(self, tenant: str, key: str) -> str | None:
        homes = self._tenants.get(tenant)
        return homes.get(key) if homes is not None else None

    def touch(self, tenant: str, key: str) -> None:
        """The conversation was used: it is the last to be forgotten."""
        homes = self._tenants.get(tenant)
        if homes is not None and key in homes:
            homes.move_to_end(key)
            self._order.move_to_end((tenant, key))

    def set(self, tenant: str, key: str, engine_id: str) -> None:
        homes = self._tenants.setdefault(tenant, OrderedDict())
        previous = homes.get(key)
        if previous != engine_id:
            if previous is not None:
                self._uncount(previous)
            self._counts[engine_id] = self._counts.get(engine_id, 0) + 1
        homes[key] = engine_id
        homes.move_to_end(key)
        self._order[(tenant, key)] = None
        self._order.move_to_end((tenant, key))
        if len(homes) > self.per_tenant:
            oldest, engine = homes.popitem(last=False)
            del self._order[(tenant, oldest)]
            self._uncount(engine)
        while len(self._order) > self.total:
            (old_tenant, old_key), _ = self._order.popitem(last=False)
            self._drop(old_tenant, old_key)

    def _drop(self, tenant: str, key: str) -> None:
        homes = self._tenants[tenant]
        self._uncount(homes.pop(key))
        if not homes:
            del self._tenants[tenant]

    def _uncount(self, engine_id: str) -> None:
        left = self._counts[engine_id] - 1
        if left:
            self._counts[engine_id] = left
        else:
            del self._counts[engine_id]

    def tenants_of(self, key: str) -> Iterator[tuple[str, str]]:
        """(tenant, engine) of every conversation with this id: for operators and tests."""
        for tenant, homes in self._tenants.items():
            if key in homes:
                yield tenant, homes[key]

    def per_engine(self) -> dict[str, int]:
        """How many conversations each engine is home to (engines home to none are absent)."""
        return dict(self._counts)
