"""localstripe on 127.0.0.1 only, from scratch, with what real Stripe does and it lacks.

- localstripe's own `start()` binds every interface ('::') and reloads state from a pickle in
  the system temp folder unless told otherwise: this serves the same aiohttp app on loopback
  with an empty store.
- Response fields that async-stripe 1.0.0-rc.10 requires and localstripe omits
  (LOCAL_STACK.md) are filled with Stripe's values for the case: PaymentIntent
  `amount_capturable`, `amount_received`, `confirmation_method`, `payment_method_types`,
  `last_payment_error.type`; Charge `amount_captured`, `billing_details`, `disputed`; Event
  `pending_webhooks`, `request`.
- Error types: localstripe calls every error `invalid_request_error`, a card decline (402)
  included; Stripe calls a card's refusal `card_error`, and that type is what tells a decline
  from an error of ours. A 402 here is `card_error`, as it is at Stripe.
- `Idempotency-Key` on POST: Stripe returns the first response to a repeated key instead of
  acting twice; localstripe ignores the header. Here the first response is kept per key and
  path and replayed.

- `GET /v1/payment_intents?customer=...`: localstripe lists every PaymentIntent and refuses
  the filter; Stripe lists the customer's (reconciliation reads them).
- Events localstripe never sends: `setup_intent.succeeded` when a SetupIntent is confirmed
  with a card, and `charge.refunded` when a refund succeeds (with the charge's running
  `amount_refunded`, as Stripe sends it).
- Disputes, which localstripe lacks: test-only routes play the cardholder's bank and send
  Stripe's signed events. `POST /_config/charges/{charge}/dispute` `amount=<cents>` (default:
  the whole charge) opens one (`charge.dispute.created`, status `needs_response`, with the
  charge and its PaymentIntent as Stripe's dispute object names them);
  `POST /_config/disputes/{id}/close` `status=won|lost` closes it (`charge.dispute.closed`).
  `GET /v1/disputes?payment_intent=...` lists them, as Stripe does.
- Checkout Sessions, which localstripe lacks entirely: `POST /v1/checkout/sessions` (mode
  `payment`, `price_data` line items, `payment_intent_data.metadata`, embedded or hosted),
  `GET /v1/checkout/sessions/{id}`, `POST /v1/checkout/sessions/{id}/expire`, with the object
  fields async-stripe requires. Stripe's own payment page cannot run here, so test-only routes
  play the customer (under `/_config/`, which localstripe serves without an API key, so a
  browser can use them), and the events go out signed to the registered webhooks like any other:
  - `POST /_config/checkout/sessions/{id}/pay` `card=<number>` (default 4242424242424242): pays
    at once through a real PaymentIntent and Charge, then `checkout.session.completed` with
    `payment_status=paid`. A declined card leaves the session open, as Stripe's page does.
  - `POST /_config/checkout/sessions/{id}/pay` `delayed=true`: a bank debit; the session
    completes `unpaid` (`checkout.session.completed`), and
    `POST /_config/checkout/sessions/{id}/settle` `outcome=succeeded|failed` later sends
    `checkout.session.async_payment_succeeded` or `..._failed`.
  - `GET /_config/checkout/{id}`: a small page with those buttons, the hosted session's `url`.

Usage: python localstripe_local.py PORT
"""

import html
import sys
import time

from aiohttp import web
from localstripe import resources
from localstripe.errors import UserError
from localstripe.resources import Event, PaymentIntent, PaymentMethod, StripeObject, schedule_webhook
from localstripe.server import app, get_post_data, json_response


def _stripes_error_types():
    original = UserError.__init__

    def __init__(self, code, message=None, contents=None):
        original(self, code, message, contents)
        if code == 402:
            self.body["error"]["type"] = "card_error"

    UserError.__init__ = __init__


_stripes_error_types()


def _with_defaults(cls, fill):
    original = cls._export

    def _export(self, expand=None):
        obj = original(self, expand=expand)
        for key, value in fill(obj).items():
            obj.setdefault(key, value)
        return obj

    cls._export = _export


def _payment_intent(obj):
    error = obj.get("last_payment_error")
    if isinstance(error, dict):
        error.setdefault("type", "card_error")
    succeeded = obj.get("status") == "succeeded"
    return {
        "amount_capturable": 0,
        "amount_received": obj.get("amount", 0) if succeeded else 0,
        "confirmation_method": "automatic",
        "payment_method_types": ["card"],
    }


_with_defaults(resources.PaymentIntent, _payment_intent)
_with_defaults(resources.Charge, lambda obj: {
    "amount_captured": obj.get("amount", 0) if obj.get("captured") else 0,
    "billing_details": {"address": None, "email": None, "name": None, "phone": None},
    "disputed": False,
})
_with_defaults(resources.Event, lambda obj: {
    "pending_webhooks": 0,
    "request": {"id": None, "idempotency_key": None},
})

# ---- listing a customer's PaymentIntents -------------------------------------------------

_list_payment_intents = resources.PaymentIntent._api_list_all.__func__


def _payment_intents_of(cls, url, customer=None, limit=None, starting_after=None, **kwargs):
    li = _list_payment_intents(cls, url, limit=limit, starting_after=starting_after, **kwargs)
    if customer is not None:
        li._list = [pi for pi in li._list if pi.customer == customer]
    return li


# The list route looks the method up on the class at each request, so this takes effect.
resources.PaymentIntent._api_list_all = classmethod(_payment_intents_of)

# ---- events localstripe does not send ---------------------------------------------------

# The confirm route was bound when localstripe registered its routes, so the hook goes one
# level down: `_attach_pm` is what a confirm with a card calls, and it sets the outcome.
_attach_pm = resources.SetupIntent._attach_pm


def _attach_and_announce(self, pm):
    try:
        _attach_pm(self, pm)
    finally:
        if self.status == "succeeded":
            schedule_webhook(Event("setup_intent.succeeded", self))


resources.SetupIntent._attach_pm = _attach_and_announce

_refund_init = resources.Refund.__init__


def _refund_and_announce(self, *args, **kwargs):
    _refund_init(self, *args, **kwargs)
    if self.status == "succeeded":
        schedule_webhook(Event("charge.refunded", resources.Charge._api_retrieve(self.charge)))


resources.Refund.__init__ = _refund_and_announce

# ---- Checkout Sessions --------------------------------------------------------------------

PORT = 8420
SESSION_LIFETIME_S = 24 * 3600


class CheckoutSession(StripeObject):
    # Every public attribute and method is exported as a field: helpers are underscored.
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(self, mode=None, customer=None, client_reference_id=None, line_items=None,
                 payment_intent_data=None, metadata=None, ui_mode=None, return_url=None,
                 success_url=None, cancel_url=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        try:
            assert mode == "payment"
            assert customer is None or (isinstance(customer, str) and customer.startswith("cus_"))
            assert isinstance(line_items, list) and line_items
            currencies, total = set(), 0
            for item in line_items:
                price = item["price_data"]
                amount, quantity = int(price["unit_amount"]), int(item.get("quantity", 1))
                assert amount > 0 and quantity > 0 and price["product_data"]["name"]
                currencies.add(price["currency"])
                total += amount * quantity
            assert len(currencies) == 1
            ui_mode = ui_mode or "hosted_page"
            assert ui_mode in ("hosted_page", "embedded_page")
            if ui_mode == "embedded_page":
                assert return_url and not success_url and not cancel_url
            else:
                assert success_url and not return_url
        except (AssertionError, KeyError, TypeError, ValueError):
            raise UserError(400, "Bad request")
        if customer:
            resources.Customer._api_retrieve(customer)
        super().__init__()
        self.mode = mode
        self.customer = customer
        self.client_reference_id = client_reference_id
        self.metadata = metadata or {}
        self.currency = currencies.pop()
        self.amount_subtotal = total
        self.amount_total = total
        self.ui_mode = ui_mode
        self.return_url = return_url
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.status = "open"
        self.payment_status = "unpaid"
        self.payment_intent = None
        self.expires_at = self.created + SESSION_LIFETIME_S
        self.client_secret = self.id + "_secret_" + resources.random_id(16) if ui_mode == "embedded_page" else None
        self.url = f"http://127.0.0.1:{PORT}/_config/checkout/{self.id}" if ui_mode == "hosted_page" else None
        self.payment_method_types = ["card", "us_bank_account"]
        self.automatic_tax = {"enabled": False, "liability": None, "provider": None, "status": None}
        self.custom_fields = []
        self.custom_text = {"after_submit": None, "shipping_address": None, "submit": None,
                            "terms_of_service_acceptance": None}
        self.shipping_options = []
        self._intent_metadata = dict((payment_intent_data or {}).get("metadata") or {})
        self._settles = None

    def _announce(self, type_):
        schedule_webhook(Event(type_, self))

    def _open(self):
        if self.status != "open" or time.time() > self.expires_at:
            raise UserError(400, "This Checkout Session is no longer open.")

    def _intent(self, card):
        pm = PaymentMethod(type="card", card={"number": card, "exp_month": 12, "exp_year": 2030, "cvc": "123"})
        return PaymentIntent._api_create(amount=self.amount_total, currency=self.currency, customer=self.customer,
                                         payment_method=pm.id, metadata=dict(self._intent_metadata), confirm=True)

    def _pay(self, card, delayed):
        self._open()
        if delayed:
            # A bank debit: the PaymentIntent settles days later (see `settle`).
            pi = PaymentIntent(amount=self.amount_total, currency=self.currency, customer=self.customer,
                               metadata=dict(self._intent_metadata))
            self.payment_intent, self.status, self._settles = pi.id, "complete", pi
            self._announce("checkout.session.completed")
            return self
        pi = self._intent(card)
        if pi.status != "succeeded":
            # Stripe's page shows the decline and the customer may try another card.
            PaymentIntent._api_cancel(pi.id)
            raise UserError(402, "Your card was declined.", {"code": "card_declined"})
        self.payment_intent, self.status, self.payment_status = pi.id, "complete", "paid"
        self._announce("checkout.session.completed")
        return self

    def _settle(self, outcome):
        if self._settles is None or self.payment_status != "unpaid":
            raise UserError(400, "Nothing to settle.")
        if outcome == "succeeded":
            pi = self._intent("4242424242424242")
            self.payment_intent, self.payment_status = pi.id, "paid"
            self._announce("checkout.session.async_payment_succeeded")
        elif outcome == "failed":
            self._announce("checkout.session.async_payment_failed")
        else:
            raise UserError(400, "outcome must be succeeded or failed")
        self._settles = None
        return self

    def _expire(self):
        self._open()
        self.status = "expired"
        self._announce("checkout.session.expired")
        return self


def _session(request):
    return CheckoutSession._api_retrieve(request.match_info["id"])


async def _create_session(request):
    data = await get_post_data(request) or {}
    data.pop("expand", None)
    return json_response(CheckoutSession._api_create(**data)._export())


async def _retrieve_session(request):
    return json_response(_session(request)._export())


async def _expire_session(request):
    return json_response(_session(request)._expire()._export())


def _answer(request, session):
    # A person on the test page goes back to it; a script gets the session.
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPSeeOther(f"/_config/checkout/{session.id}")
    return json_response(session._export())


async def _pay(request):
    data = await get_post_data(request) or {}
    delayed = str(data.get("delayed", "false")).lower() == "true"
    return _answer(request, _session(request)._pay(data.get("card") or "4242424242424242", delayed))


async def _settle(request):
    data = await get_post_data(request) or {}
    return _answer(request, _session(request)._settle(data.get("outcome")))


async def _page(request):
    s = _session(request)
    base = f"/_config/checkout/sessions/{s.id}"
    amount = f"{s.amount_total / 100:.2f} {s.currency.upper()}"
    forms = "".join(
        f'<form method="post" action="{base}/{path}">{fields}<button>{html.escape(label)}</button></form>'
        for path, fields, label in [
            ("pay", "", "Pay with test card 4242"),
            ("pay", '<input type="hidden" name="card" value="4000000000000002">', "Pay with a declined card"),
            ("pay", '<input type="hidden" name="delayed" value="true">', "Pay by bank debit (settles later)"),
            ("settle", '<input type="hidden" name="outcome" value="succeeded">', "Bank debit succeeds"),
            ("settle", '<input type="hidden" name="outcome" value="failed">', "Bank debit fails"),
        ]
    )
    body = (f"<!doctype html><title>Local Checkout</title><h1>Local Checkout (test only)</h1>"
            f"<p>{html.escape(s.id)}: {html.escape(amount)}, status {html.escape(s.status)}, "
            f"payment {html.escape(s.payment_status)}</p>{forms}")
    return web.Response(text=body, content_type="text/html")


# ---- Disputes -------------------------------------------------------------------------------

class Dispute(StripeObject):
    object = "dispute"
    _id_prefix = "dp_"

    def __init__(self, charge=None, amount=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        ch = resources.Charge._api_retrieve(charge)
        super().__init__()
        ch.disputed = True
        self.charge = ch.id
        self.payment_intent = ch.payment_intent
        self.amount = int(amount) if amount else ch.amount
        self.currency = ch.currency
        self.status = "needs_response"
        self.reason = "fraudulent"
        self.metadata = {}
        self.livemode = False
        self.is_charge_refundable = False


async def _open_dispute(request):
    data = await get_post_data(request) or {}
    dispute = Dispute._api_create(charge=request.match_info["charge"], amount=data.get("amount"))
    schedule_webhook(Event("charge.dispute.created", dispute))
    return json_response(dispute._export())


async def _close_dispute(request):
    data = await get_post_data(request) or {}
    if data.get("status") not in ("won", "lost"):
        raise UserError(400, "status must be won or lost")
    dispute = Dispute._api_retrieve(request.match_info["id"])
    dispute.status = data["status"]
    schedule_webhook(Event("charge.dispute.closed", dispute))
    return json_response(dispute._export())


async def _list_disputes(request):
    pi = request.query.get("payment_intent")
    items = [d._export() for d in resources.store.values()
             if isinstance(d, Dispute) and (pi is None or d.payment_intent == pi)]
    return json_response({"object": "list", "data": items, "has_more": False, "url": "/v1/disputes"})


# Before localstripe's catch-all routes are matched; the router is not frozen until start.
app.router.add_post("/v1/checkout/sessions", _create_session)
app.router.add_get("/v1/checkout/sessions/{id}", _retrieve_session)
app.router.add_post("/v1/checkout/sessions/{id}/expire", _expire_session)
app.router.add_post("/_config/checkout/sessions/{id}/pay", _pay)
app.router.add_post("/_config/checkout/sessions/{id}/settle", _settle)
app.router.add_get("/_config/checkout/{id}", _page)
app.router.add_post("/_config/charges/{charge}/dispute", _open_dispute)
app.router.add_post("/_config/disputes/{id}/close", _close_dispute)
app.router.add_get("/v1/disputes", _list_disputes)

_first_responses: dict = {}


@web.middleware
async def idempotency(request, handler):
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    slot = (request.path, key)
    if slot in _first_responses:
        status, body = _first_responses[slot]
        return web.Response(status=status, body=body, content_type="application/json")
    response = await handler(request)
    if response.status < 500 and isinstance(getattr(response, "body", None), (bytes, bytearray)):
        _first_responses[slot] = (response.status, bytes(response.body))
    return response


app.middlewares.insert(0, idempotency)


def main() -> None:
    global PORT
    PORT = int(sys.argv[1])
    web.run_app(app, host="127.0.0.1", port=PORT, print=None)


if __name__ == "__main__":
    main()
