"""The one exception type of the client, and the webhook signature's."""

from __future__ import annotations

from typing import Any, Dict, Optional


class TopupError(Exception):
    """Any failed call: the API's answer (`status`, and the `code` and `message` of its
    `{"error": {...}}` body), or no answer at all (`status` is None, `code` is
    `connection_error`, after the retries).

    `body` is the whole JSON body when there was one: a 402 carries the `balance` (and
    `error.consumable`), an `entity_budget_exceeded` the `entity` and `remaining_this_month`.
    `retry_after` is the server's `Retry-After` in seconds, when it sent one.
    """

    def __init__(self, status: Optional[int], code: str, message: str = "",
                 body: Optional[Dict[str, Any]] = None, retry_after: Optional[float] = None) -> None:
        super().__init__(f"{status if status is not None else 'no answer'} {code}: {message}".rstrip(": "))
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}
        self.retry_after = retry_after

    @property
    def balance(self) -> Optional[int]:
        """The balance a 402 reports, in micro-credits."""
        value = self.body.get("balance")
        return value if isinstance(value, int) else None

    def __repr__(self) -> str:
        return f"TopupError(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class SignatureError(TopupError):
    """A webhook delivery that does not verify: `code` is `malformed_header`,
    `timestamp_out_of_tolerance`, `no_matching_signature` or `malformed_payload`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(None, code, message)
