"""Sealing what the gateway hands a client to send back later (compaction items): opaque and
tamper-evident, readable only by this deployment and only for the tenant it was made for.

AES-256-GCM under a key derived (HMAC-SHA256) from the deployment's secret, the one every
replica finds in the shared store, so any replica opens what another sealed. The tenant's name
is the associated data: an item made for one team fails authentication for every other, exactly
as an altered one does. A token is `base64url(version ‖ nonce ‖ ciphertext ‖ tag)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from warmroute.errors import InvalidRequest

VERSION = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_INFO = b"warmroute sealed items v1"


class Unsealable(InvalidRequest):
    """A token this deployment did not seal for this tenant, or one altered since."""


def sealing_key(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, KEY_INFO + b"\x00" + purpose.encode(), hashlib.sha256).digest()


def seal(secret: bytes, purpose: str, tenant: str, payload: dict[str, Any]) -> str:
    """`payload` (JSON) sealed for `tenant`; `purpose` separates the kinds of sealed items."""
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    box = AESGCM(sealing_key(secret, purpose)).encrypt(nonce, plain, VERSION + tenant.encode())
    return base64.urlsafe_b64encode(VERSION + nonce + box).rstrip(b"=").decode()


def unseal(secret: bytes, purpose: str, tenant: str, token: str) -> dict[str, Any]:
    """The payload sealed in `token` for `tenant`, or `Unsealable`."""
    refused = Unsealable(
        "encrypted_content was not made by this deployment for this team: it is altered, "
        "truncated, or belongs to another tenant"
    )
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (ValueError, binascii.Error):
        raise refused from None
    if len(raw) < 1 + NONCE_BYTES + TAG_BYTES or raw[:1] != VERSION:
        raise refused
    nonce, box = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
    try:
        plain = AESGCM(sealing_key(secret, purpose)).decrypt(nonce, box, VERSION + tenant.encode())
    except InvalidTag:
        raise refused from None
    payload = json.loads(plain)
    if not isinstance(payload, dict):
        raise refused
    return payload
