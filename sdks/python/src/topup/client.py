"""`Client`: one method per operation of the topup API (infra/openapi.yaml).

Amounts are integer micro-credits (1 credit = 1,000,000); money is integer minor units (cents).
Every call answers the JSON body of its success as a dict (the CSV export as text) or raises
`TopupError`. Calls that debit, grant, reserve or buy carry an idempotency key: the client
makes one when you give none and sends the same key on every retry, so a retry never charges
twice. 429, 502, 503, 504 and network errors are retried with exponential backoff and jitter,
waiting at least what `Retry-After` says.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from .errors import TopupError
from .operations import OPERATIONS

__version__ = "0.1.0"

#: Statuses after which a request is sent again (each means nothing was done, or that the
#: server asks for a retry: throttled, busy, AWS or Stripe briefly unavailable).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Of those, the ones that say the request was not carried out, so that even a request without
#: an idempotency key may be sent again.
NOT_DONE_STATUSES = frozenset({429, 503})

_UNSET: Any = object()

Token = Union[str, Callable[[], str]]


def new_idempotency_key() -> str:
    """A fresh idempotency key (a random UUID)."""
    return str(uuid.uuid4())


class Client:
    """A client of one topup deployment.

    `base_url` is the API's address (e.g. `https://billing.example.com`); `token` is the bearer
    token, or a function that returns a current one (called before every request, so a token
    that expires can be renewed). `max_retries` retries follow the first attempt, each after
    `backoff` × 2ⁿ seconds (at most `max_backoff`, with jitter) or the server's `Retry-After`
    (at most `max_retry_after`).
    """

    def __init__(self, base_url: str, token: Token, *, timeout: float = 30.0, max_retries: int = 4,
                 backoff: float = 0.2, max_backoff: float = 8.0, max_retry_after: float = 60.0,
                 user_agent: Optional[str] = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.user_agent = user_agent or f"topup-python/{__version__}"
        self._sleep = time.sleep

    # ---- accounts ------------------------------------------------------------------------------

    def put_account(self, account_id: str, plan: str, billing_contacts: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """Creates or updates an account (service): its plan and up to ten billing contacts
        (`{"email", "phone"?, "sms_opt_in"?}`). Answers the account."""
        return self._call("putAccount", {"account_id": account_id},
                          body={"plan": plan, "billing_contacts": [dict(c) for c in billing_contacts]})

    def credits(self, account_id: str) -> Dict[str, Any]:
        """The credits view: `balance`, `low_balance`, lifetime totals, the five most recent
        transactions, `allowances`, auto-recharge, the saved card, `unit`, alerts (view roles)."""
        return self._call("getCredits", {"account_id": account_id})

    def transactions(self, account_id: str, *, limit: Optional[int] = None, cursor: Optional[str] = None,
                     entity: Optional[str] = None) -> Dict[str, Any]:
        """One page of the ledger, newest first: `{"transactions": [...], "next_cursor"}`
        (view roles). Pass `next_cursor` back as `cursor` for the next page, or use
        `iter_transactions`. `entity` keeps that entity's entries only."""
        return self._call("getTransactions", {"account_id": account_id},
                          query={"limit": limit, "cursor": cursor, "entity": entity})

    def iter_transactions(self, account_id: str, *, page_size: int = 100,
                          entity: Optional[str] = None) -> Iterator[Dict[str, Any]]:
        """Every ledger entry, newest first, fetching pages of `page_size` as you iterate."""
        return _pages(lambda cursor: self.transactions(account_id, limit=page_size, cursor=cursor, entity=entity),
                      "transactions")

    def transactions_csv(self, account_id: str) -> str:
        """The whole ledger as CSV text, newest first (view roles)."""
        return self._call("getTransactionsCsv", {"account_id": account_id}, expect_json=False)

    def grants(self, account_id: str) -> Dict[str, Any]:
        """`{"grants": [...]}`: active grants in burn order, then the ended ones (view roles)."""
        return self._call("getGrants", {"account_id": account_id})

    def void_grant(self, account_id: str, grant_id: str, *, reason: Optional[str] = None) -> Dict[str, Any]:
        """Removes what remains of a grant (service, finance), with an optional `reason` for the
        audit log. Voiding an ended grant answers it as it is."""
        return self._call("voidGrant", {"account_id": account_id, "grant_id": grant_id},
                          body={"reason": reason} if reason else {})

    def adjust(self, account_id: str, amount: int, reason: str, idempotency_key: Optional[str] = None, *,
               expires_at: Optional[str] = None, priority: Optional[int] = None, category: Optional[str] = None,
               charge: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """Grants (`amount` > 0) or takes back (< 0) micro-credits (service). A grant may carry
        `expires_at` (RFC 3339), `priority` (0–100, lower burns first), `category`
        (`promotional` or `paid`) and, when paid, `charge` (`{"amount", "currency"}`).
        Answers the ledger entry."""
        body: Dict[str, Any] = {"amount": amount, "reason": reason,
                                "idempotency_key": idempotency_key or new_idempotency_key()}
        for name, value in (("expires_at", expires_at), ("priority", priority), ("category", category),
                            ("charge", charge)):
            if value is not None:
                body[name] = dict(value) if isinstance(value, Mapping) else value
        return self._call("postAdjustment", {"account_id": account_id}, body=body)

    def set_auto_recharge(self, account_id: str, enabled: bool, *, threshold: Optional[int] = None,
                          amount: Optional[int] = None, monthly_max: Optional[int] = None,
                          monthly_spend_max: Optional[int] = None) -> Dict[str, Any]:
        """Auto-recharge settings (billing roles): below `threshold` micro-credits, buy `amount`,
        at most `monthly_max` times and `monthly_spend_max` minor units a month."""
        body: Dict[str, Any] = {"enabled": enabled}
        for name, value in (("threshold", threshold), ("amount", amount), ("monthly_max", monthly_max),
                            ("monthly_spend_max", monthly_spend_max)):
            if value is not None:
                body[name] = value
        return self._call("putAutoRecharge", {"account_id": account_id}, body=body)

    def check(self, account_id: str, consumable: str, quantity: int, entity: Optional[str] = None) -> Dict[str, Any]:
        """Would this debit be allowed now? `{"allowed", "reason", "cost", "available"}`; writes
        nothing and reserves nothing (view roles)."""
        return self._call("checkCredits", {"account_id": account_id},
                          query={"consumable": consumable, "quantity": quantity, "entity": entity})

    def set_alerts(self, account_id: str, thresholds: Sequence[int]) -> Dict[str, Any]:
        """Replaces the account's balance alerts: up to five thresholds in micro-credits; an
        empty list removes them (billing roles)."""
        return self._call("putAlerts", {"account_id": account_id}, body={"thresholds": list(thresholds)})

    def set_lanes(self, account_id: str, lanes: int) -> Dict[str, Any]:
        """Fixes a hot account's lanes at `lanes`, 1 to 64; 1 brings every lane's credits home
        and the account never spreads itself (service)."""
        return self._call("putLanes", {"account_id": account_id}, body={"lanes": lanes})

    def set_lane_bounds(self, account_id: str, min: int = 1, max: int = 64) -> Dict[str, Any]:
        """Lets a hot account spread itself between `min` and `max` lanes (defaults: the
        default policy) (service)."""
        return self._call("putLanes", {"account_id": account_id}, body={"min": min, "max": max})

    # ---- entities (members, projects, keys) ---------------------------------------------------

    def entities(self, account_id: str) -> Dict[str, Any]:
        """`{"entities": [...]}`: every member, project or key with its monthly limit and this
        month's spend (view roles)."""
        return self._call("listEntities", {"account_id": account_id})

    def entity(self, account_id: str, entity: str) -> Dict[str, Any]:
        """One entity's monthly limit and spend this month (view roles)."""
        return self._call("getEntity", {"account_id": account_id, "entity": entity})

    def set_entity(self, account_id: str, entity: str, *, monthly_limit: Any = _UNSET,
                   name: Any = _UNSET) -> Dict[str, Any]:
        """Sets an entity's `monthly_limit` (micro-credits, or None for none) and display `name`;
        an argument left out stays as it is (owners, admins, the service)."""
        body: Dict[str, Any] = {}
        if monthly_limit is not _UNSET:
            body["monthly_limit"] = monthly_limit
        if name is not _UNSET:
            body["name"] = name
        return self._call("putEntity", {"account_id": account_id, "entity": entity}, body=body)

    def notifications(self, account_id: str, limit: Optional[int] = None) -> Dict[str, Any]:
        """`{"notifications": [...]}`: the emails and SMS sent about the account, newest first."""
        return self._call("getNotifications", {"account_id": account_id}, query={"limit": limit})

    # ---- usage ---------------------------------------------------------------------------------

    def debit(self, account_id: str, consumable: str, quantity: int, idempotency_key: Optional[str] = None,
              entity: Optional[str] = None) -> Dict[str, Any]:
        """Debits usage: the month's allowance first, then credits (service). Answers
        `{"from_allowance", "from_credits", "balance", "transaction_id"}`; the same key again
        answers the same. Out of credits (or past `entity`'s monthly limit) raises a
        `TopupError` with status 402 and the consumable's code."""
        body: Dict[str, Any] = {"consumable": consumable, "quantity": quantity,
                                "idempotency_key": idempotency_key or new_idempotency_key()}
        if entity is not None:
            body["entity"] = entity
        return self._call("postUsage", {"account_id": account_id}, body=body)

    def debit_batch(self, account_id: str, events: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        """Debits up to 500 usage events at once, each on its own (service). Each event is
        `{"consumable", "quantity", "idempotency_key"?, "entity"?}`; a key is made for an event
        without one. Answers `{"results": [...]}`, one per event in order, each with the
        `status` a single debit would have answered (200, 402, 409, 422). See `DebitBatcher`
        for batching single debits from many threads."""
        out = []
        for e in events:
            event = {k: v for k, v in dict(e).items() if v is not None}
            event.setdefault("idempotency_key", new_idempotency_key())
            out.append(event)
        return self._call("postUsageBatch", {"account_id": account_id}, body={"events": out})

    def hold(self, account_id: str, consumable: str, quantity: int, idempotency_key: Optional[str] = None, *,
             ttl_seconds: Optional[int] = None, entity: Optional[str] = None) -> Dict[str, Any]:
        """Reserves credits for a metered session (service): `{"hold_id", "reserved",
        "reserved_units", "expires_at", ...}`. Settle it with `settle_hold`."""
        body: Dict[str, Any] = {"consumable": consumable, "quantity": quantity,
                                "idempotency_key": idempotency_key or new_idempotency_key()}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if entity is not None:
            body["entity"] = entity
        return self._call("postHold", {"account_id": account_id}, body=body)

    def settle_hold(self, account_id: str, hold_id: str, quantity: int) -> Dict[str, Any]:
        """Settles a hold with the units actually used (0 for none); the rest is released."""
        return self._call("settleHold", {"account_id": account_id, "hold_id": hold_id}, body={"quantity": quantity})

    # ---- purchases and the card ----------------------------------------------------------------

    def purchase(self, account_id: str, *, amount: Optional[int] = None, package: Optional[str] = None,
                 blocks: Optional[int] = None, idempotency_key: Optional[str] = None) -> Dict[str, Any]:
        """Starts buying credits through Stripe Checkout (billing roles): one of `amount` (minor
        units), `package` or `blocks`, or none for the profile's default. Answers the pending
        purchase with its Checkout `client_secret` or `url`."""
        body = {k: v for k, v in (("amount", amount), ("package", package), ("blocks", blocks)) if v is not None}
        return self._call("postPurchase", {"account_id": account_id}, body=body,
                          headers={"Idempotency-Key": idempotency_key or new_idempotency_key()})

    def get_purchase(self, account_id: str, purchase_id: str) -> Dict[str, Any]:
        """A purchase and its status (`pending`, `processing`, `succeeded`, `failed`, `expired`),
        with `subtotal`, `tax`, `total` and `receipt_url` once paid."""
        return self._call("getPurchase", {"account_id": account_id, "purchase_id": purchase_id})

    def purchases(self, account_id: str, *, limit: Optional[int] = None,
                  cursor: Optional[str] = None) -> Dict[str, Any]:
        """One page of purchases and auto-recharges, newest first, each with its receipt:
        `{"purchases": [...], "next_cursor"}` (billing roles)."""
        return self._call("listPurchases", {"account_id": account_id}, query={"limit": limit, "cursor": cursor})

    def iter_purchases(self, account_id: str, *, page_size: int = 100) -> Iterator[Dict[str, Any]]:
        """Every purchase and auto-recharge, newest first, page by page as you iterate."""
        return _pages(lambda cursor: self.purchases(account_id, limit=page_size, cursor=cursor), "purchases")

    def setup_card(self, account_id: str, idempotency_key: Optional[str] = None) -> Dict[str, Any]:
        """A Stripe SetupIntent to save a card for auto-recharge (billing roles):
        `{"setup_intent_id", "client_secret"}`."""
        return self._call("setupCard", {"account_id": account_id}, body={},
                          headers={"Idempotency-Key": idempotency_key or new_idempotency_key()})

    def remove_card(self, account_id: str) -> Dict[str, Any]:
        """Removes the saved card; auto-recharge turns off with it (billing roles)."""
        return self._call("removeCard", {"account_id": account_id})

    # ---- reports -------------------------------------------------------------------------------

    def revenue_report(self, month: str) -> Dict[str, Any]:
        """The revenue report of a calendar month, `YYYY-MM` (service)."""
        return self._call("getRevenueReport", {}, query={"month": month})

    # ---- webhook endpoints (service) -------------------------------------------------------------

    def create_webhook_endpoint(self, url: str, events: Sequence[str], *, description: Optional[str] = None,
                                contact_email: Optional[str] = None) -> Dict[str, Any]:
        """Registers an endpoint for the domain events (`events`: types, or `["*"]`). The answer
        carries its signing `secret`, shown only here and after a rotation: keep it for
        `verify_webhook`."""
        body: Dict[str, Any] = {"url": url, "events": list(events)}
        if description is not None:
            body["description"] = description
        if contact_email is not None:
            body["contact_email"] = contact_email
        return self._call("createWebhookEndpoint", {}, body=body)

    def webhook_endpoints(self) -> Dict[str, Any]:
        """`{"webhook_endpoints": [...]}`, without their secrets."""
        return self._call("listWebhookEndpoints", {})

    def webhook_endpoint(self, endpoint_id: str) -> Dict[str, Any]:
        """One endpoint, without its secret."""
        return self._call("getWebhookEndpoint", {"endpoint_id": endpoint_id})

    def delete_webhook_endpoint(self, endpoint_id: str) -> Dict[str, Any]:
        """Removes an endpoint; nothing more is delivered to it."""
        return self._call("deleteWebhookEndpoint", {"endpoint_id": endpoint_id})

    def rotate_webhook_secret(self, endpoint_id: str) -> Dict[str, Any]:
        """A new signing secret (in the answer); the old one keeps signing beside it for 24 hours."""
        return self._call("rotateWebhookSecret", {"endpoint_id": endpoint_id}, body={})

    def enable_webhook_endpoint(self, endpoint_id: str) -> Dict[str, Any]:
        """Enables an endpoint that was disabled for failing."""
        return self._call("enableWebhookEndpoint", {"endpoint_id": endpoint_id}, body={})

    def webhook_deliveries(self, endpoint_id: str, *, limit: Optional[int] = None,
                           cursor: Optional[str] = None) -> Dict[str, Any]:
        """One page of an endpoint's deliveries, newest first: `{"deliveries", "next_cursor"}`."""
        return self._call("listWebhookDeliveries", {"endpoint_id": endpoint_id},
                          query={"limit": limit, "cursor": cursor})

    def iter_webhook_deliveries(self, endpoint_id: str, *, page_size: int = 100) -> Iterator[Dict[str, Any]]:
        """Every delivery of the endpoint, newest first, page by page as you iterate."""
        return _pages(lambda cursor: self.webhook_deliveries(endpoint_id, limit=page_size, cursor=cursor),
                      "deliveries")

    def redeliver_webhook(self, endpoint_id: str, delivery_id: str, *, reason: Optional[str] = None) -> Dict[str, Any]:
        """Sends one delivery again now, with the same event id (202: queued); `reason` goes in
        the audit log."""
        return self._call("redeliverWebhook", {"endpoint_id": endpoint_id, "delivery_id": delivery_id},
                          body={"reason": reason} if reason else {})

    # ---- staff and the service (rules §19) ----------------------------------------------------------

    def audit(self, *, account_id: Optional[str] = None, actor: Optional[str] = None, action: Optional[str] = None,
              limit: Optional[int] = None, cursor: Optional[str] = None) -> Dict[str, Any]:
        """One page of the audit log, newest first (finance, service): `{"records", "next_cursor"}`,
        one account's chain or every record, by actor (`sub`) and action."""
        return self._call("getAudit", {}, query={"account_id": account_id, "actor": actor, "action": action,
                                                 "limit": limit, "cursor": cursor})

    def iter_audit(self, *, account_id: Optional[str] = None, actor: Optional[str] = None,
                   action: Optional[str] = None, page_size: int = 100) -> Iterator[Dict[str, Any]]:
        """Every audit record that matches, newest first, page by page as you iterate."""
        return _pages(lambda cursor: self.audit(account_id=account_id, actor=actor, action=action, limit=page_size,
                                                cursor=cursor), "records")

    def search_accounts(self, *, account_id: Optional[str] = None, email: Optional[str] = None,
                        customer: Optional[str] = None) -> Dict[str, Any]:
        """`{"accounts": [...]}` found by one of an id, the first billing contact's email or a
        Stripe customer (service, staff)."""
        return self._call("searchAccounts", {}, query={"account_id": account_id, "email": email, "customer": customer})

    def account_details(self, account_id: str) -> Dict[str, Any]:
        """What the account holds that the credits view does not show: holds, disputes, its
        recharge, lanes, its audit chain's head (service, staff)."""
        return self._call("getAccountDetails", {"account_id": account_id})

    def payments(self, account_id: str) -> Dict[str, Any]:
        """`{"payments": [...]}`: what the account was credited for, and what refunds took back."""
        return self._call("getPayments", {"account_id": account_id})

    def refund_payment(self, account_id: str, payment_id: str, reason: str, *, amount: Optional[int] = None,
                       idempotency_key: Optional[str] = None) -> Dict[str, Any]:
        """Refunds `amount` minor units (else what is left) of a payment at Stripe (finance,
        service); its credits are taken back when Stripe's `charge.refunded` arrives."""
        body: Dict[str, Any] = {"reason": reason, "idempotency_key": idempotency_key or new_idempotency_key()}
        if amount is not None:
            body["amount"] = amount
        return self._call("refundPayment", {"account_id": account_id, "payment_id": payment_id}, body=body)

    def reconciliation(self, run: Optional[str] = None) -> Dict[str, Any]:
        """The differences a day's reconciliation run found (`run`: `YYYY-MM-DD`; else today's,
        then yesterday's)."""
        return self._call("getReconciliation", {}, query={"run": run})

    def dead_letters(self) -> Dict[str, Any]:
        """`{"queues": [...]}`: how many messages wait on each dead-letter and failure queue."""
        return self._call("getDeadLetters", {})

    # ---- the request ---------------------------------------------------------------------------

    def _call(self, operation_id: str, path_params: Mapping[str, str], *, query: Optional[Mapping[str, Any]] = None,
              body: Optional[Mapping[str, Any]] = None, headers: Optional[Mapping[str, str]] = None,
              expect_json: bool = True) -> Any:
        op = OPERATIONS[operation_id]
        path = op.path
        for name, value in path_params.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
            path = path.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
        url = self.base_url + path
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        attempt = 0
        while True:
            attempt += 1
            req = urllib.request.Request(url, data=data, method=op.method)
            token = self._token() if callable(self._token) else self._token
            req.add_header("Authorization", f"Bearer {token}")
            req.add_header("Accept", "application/json" if expect_json else "text/csv, application/json")
            req.add_header("User-Agent", self.user_agent)
            if data is not None:
                req.add_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                req.add_header(k, v)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                    status = resp.status
                if not expect_json:
                    return raw.decode("utf-8")
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    raise TopupError(status, "invalid_response", f"{op.method} {path}: the answer is not JSON") from None
            except urllib.error.HTTPError as e:
                err = _api_error(e.code, e.read(), e.headers.get("Retry-After"))
                retry = e.code in (RETRY_STATUSES if op.repeatable else NOT_DONE_STATUSES)
                if not retry or attempt > self.max_retries:
                    raise err from None
                self._sleep(self._delay(attempt, err.retry_after))
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                refused = isinstance(reason, ConnectionRefusedError)
                if not (op.repeatable or refused) or attempt > self.max_retries:
                    raise TopupError(None, "connection_error", f"{op.method} {path}: {reason}") from None
                self._sleep(self._delay(attempt, None))

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Before retry `attempt` (1-based): half the capped exponential step plus a random part
        of the other half, and never less than the server's `Retry-After`."""
        step = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        delay = step / 2 + random.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


def _api_error(status: int, raw: bytes, retry_after: Optional[str]) -> TopupError:
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), str) else f"http_{status}"
    message = error.get("message") if isinstance(error.get("message"), str) else raw[:200].decode("utf-8", "replace")
    return TopupError(status, code, message, body, _retry_after(retry_after))


def _retry_after(value: Optional[str]) -> Optional[float]:
    """`Retry-After` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _pages(fetch: Callable[[Optional[str]], Dict[str, Any]], field: str) -> Iterator[Dict[str, Any]]:
    cursor: Optional[str] = None
    while True:
        page = fetch(cursor)
        items: List[Dict[str, Any]] = page.get(field) or []
        yield from items
        cursor = page.get("next_cursor")
        if not cursor:
            return
