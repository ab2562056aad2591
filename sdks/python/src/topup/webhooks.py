"""Verifying what topup sends to a webhook endpoint.

Each delivery is `POST <url>` with a JSON body and the header
`Topup-Signature: t=<unix seconds>,v1=<hex>`, where `v1` is HMAC-SHA256, keyed with the
endpoint's secret, of `<t>.<the raw body>` (shared/src/webhooks/mod.rs, `signature_header`).
For 24 hours after a rotation the header carries one more `v1`, made with the previous secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Dict, List, Optional, Union

from .errors import SignatureError

#: The header a delivery's signature is in.
SIGNATURE_HEADER = "Topup-Signature"


def sign_webhook(payload: Union[bytes, str], secret: str, timestamp: Optional[int] = None) -> str:
    """The `Topup-Signature` value topup would send with `payload` at `timestamp` (default:
    now). For your tests of a receiver."""
    body = payload.encode() if isinstance(payload, str) else payload
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={_signature(secret, t, body)}"


def verify_webhook(payload: Union[bytes, str], header: str, secret: str, tolerance: int = 300,
                   *, now: Optional[float] = None) -> Dict[str, Any]:
    """Checks a delivery and answers its event (`{"id", "type", "created", "account_id",
    "data"}`), or raises `SignatureError`.

    `payload` is the raw body as received, before any parsing; `header` the `Topup-Signature`
    value; `secret` the endpoint's signing secret. A timestamp more than `tolerance` seconds
    from now is refused, so a captured delivery cannot be replayed later. Any `v1` that
    matches is enough (one per secret during a rotation). Compares in constant time.
    """
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    t: Optional[int] = None
    signatures: List[str] = []
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                t = int(value)
            except ValueError:
                t = None
        elif key == "v1":
            signatures.append(value)
    if t is None or not signatures:
        raise SignatureError("malformed_header", "The header has no t=<unix seconds> or no v1= signature.")
    clock = time.time() if now is None else now
    if abs(clock - t) > tolerance:
        raise SignatureError("timestamp_out_of_tolerance",
                             f"The signature's time is {abs(clock - t):.0f} s from now (tolerance {tolerance} s).")
    expected = _signature(secret, t, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureError("no_matching_signature", "No signature in the header matches this payload and secret.")
    try:
        event = json.loads(body)
    except ValueError:
        raise SignatureError("malformed_payload", "The payload is not JSON.") from None
    if not isinstance(event, dict):
        raise SignatureError("malformed_payload", "The payload is not a JSON object.")
    return event


def _signature(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
