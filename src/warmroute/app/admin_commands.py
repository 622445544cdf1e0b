"""`warmroute keys create|list|revoke` and `warmroute usage`: administration over the store
(`--data-dir` for the SQLite file, or `--database-url`), with nothing else running."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from warmroute.pricing import ModelPrice

GROUP_BY = ("key", "model", "day", "team")


def add_store_location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path(".warmroute"))
    parser.add_argument("--database-url", default=None)


def store_url(args: argparse.Namespace) -> str:
    return str(args.database_url or Path(args.data_dir) / "warmroute.db")


def register_admin_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--team", required=True)
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--admin", action="store_true",
                        help="an operator's key: /metrics, /v1/admin/*, every team's usage, "
                             "the dashboard")
    add_store_location(create)
    create.set_defaults(func=run(keys_create))
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--team", default=None)
    add_store_location(listing)
    listing.set_defaults(func=run(keys_list))
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    add_store_location(revoke)
    revoke.set_defaults(func=run(keys_revoke))

    usage = sub.add_parser("usage", help="tokens, cached share, cost and savings from the ledger")
    usage.add_argument("--since", type=float, default=None,
                       help="hours back to start from (default 720, i.e. 30 days)")
    usage.add_argument("--by", choices=GROUP_BY, default="model")
    usage.add_argument("--team", default=None, help="only this team's requests")
    add_store_location(usage)
    usage.set_defaults(func=run(usage_report))


def run(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def runner(args: argparse.Namespace) -> int:
        return asyncio.run(command(args))

    return runner


async def keys_create(args: argparse.Namespace) -> int:
    from warmroute.errors import InvalidRequest
    from warmroute.gateway.auth import create_key
    from warmroute.store import open_store

    store = await open_store(store_url(args))
    try:
        secret, key = await create_key(store, args.name, args.team, args.rpm, args.tpm,
                                       admin=args.admin)
    except InvalidRequest as exc:
        raise SystemExit(f"warmroute keys create: {exc.message}") from exc
    finally:
        await store.close()
    role = "admin" if key.admin else "tenant"
    print(f"key id:  {key.key_id}\nteam:    {key.team}\nrole:    {role}\nsecret:  {secret}\n"
          "(the secret is shown only now; only its hash is stored)")
    return 0


async def keys_list(args: argparse.Namespace) -> int:
    from warmroute.store import open_store

    store = await open_store(store_url(args))
    try:
        keys = await store.api_keys.list_keys(args.team)
    finally:
        await store.close()
    for key in keys:
        state = "revoked" if key.revoked else "active"
        role = "admin " if key.admin else "tenant"
        print(f"{key.key_id}  {key.team:12}  {key.name:16}  {key.redacted}  {role}  {state}"
              f"  rpm={key.rpm or '-'} tpm={key.tpm or '-'}")
    return 0


async def keys_revoke(args: argparse.Namespace) -> int:
    from warmroute.store import open_store

    store = await open_store(store_url(args))
    try:
        revoked = await store.api_keys.revoke(args.key_id, time.time())
    finally:
        await store.close()
    print(f"revoked {args.key_id}" if revoked else f"no active key {args.key_id}")
    return 0 if revoked else 1


async def usage_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from warmroute.store import open_store

    hours = 720.0 if args.since is None else args.since
    since = time.time() - hours * 3600
    store = await open_store(store_url(args))
    try:
        rows = await store.usage.summary(since, args.by, owner=args.team)
        by_model = await store.usage.summary(since, "model", owner=args.team)
    finally:
        await store.close()
    table = Table(title=f"warmroute usage, last {hours:g} h, by {args.by}")
    for column in ("group", "requests", "prompt", "cached", "cached share", "completion",
                   "cost (USD)"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for r in rows:
        share = r.cached_tokens / r.prompt_tokens if r.prompt_tokens else 0.0
        table.add_row(str(r.group), str(r.requests), str(r.prompt_tokens), str(r.cached_tokens),
                      f"{share:.1%}", str(r.completion_tokens), f"{r.cost_in_usd_ticks / 1e10:.6f}")
    console = Console()
    console.print(table)
    saved = sum(ModelPrice().saved_ticks(r.cached_tokens) for r in by_model)
    console.print(f"caching saved about ${saved / 1e10:.6f} at the default prices "
                  "(the gateway's GET /v1/usage prices it with its configured prices)")
    return 0
