"""The tables as the latest migration leaves them, for queries to name their columns.

Migrations (`migrations.py`) never build tables from here: each step spells out the shape it
creates, so that a later change to this file cannot change what an old step does. A test checks
that the migrated database and this file agree.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("engine_id", sa.Text),
    sa.Column("previous_response_id", sa.Text),
    sa.Column("input", sa.JSON, nullable=False),
    sa.Column("output", sa.JSON, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
)

deferred_completions = sa.Table(
    "deferred_completions",
    metadata,
    sa.Column("request_id", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("result", sa.JSON(none_as_null=True)),
    sa.Column("error", sa.JSON(none_as_null=True)),
    sa.Column("runner", sa.Text),
    sa.Column("heartbeat_at", sa.Double),
    sa.Index("deferred_status_owner", "status", "owner"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("team", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("redacted", sa.Text, nullable=False),
    sa.Column("rpm", sa.BigInteger),
    sa.Column("tpm", sa.BigInteger),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
)

usage_ledger = sa.Table(
    "usage_ledger",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("day", sa.Text, nullable=False),
    sa.Column("key_id", sa.Text),
    sa.Column("team", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("engine_id", sa.Text),
    sa.Column("surface", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_in_usd_ticks", sa.BigInteger, nullable=False),
)

deployment_settings = sa.Table(
    "deployment_settings",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)
