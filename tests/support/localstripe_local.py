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
- Invoices and tax (rules §20), which localstripe lacks in the shape Stripe has them today
  (its own `Invoice` is the subscriptions-era one: no `auto_advance`, `hosted_invoice_url`,
  `invoice_pdf`, `attach_payment` or automatic tax). This adapter serves its own:
  - Checkout `invoice_creation[enabled]=true` (with `invoice_data[metadata]` and
    `[description]`): when the session is paid, a paid invoice for it (its line, subtotal, tax,
    total, the session's PaymentIntent) is made, the session's `invoice` names it, and
    `invoice.paid` follows `checkout.session.completed` (a bank debit's invoice is made when it
    settles). Like Stripe at API versions from 2025-03-31, the invoice carries no
    `payment_intent` field.
  - Checkout `automatic_tax[enabled]=true` with `billing_address_collection=required` and
    `customer_update[address]=auto`: the customer's address is what `pay` is given
    (`country=`, default `US`). The one place with tax is the test address: `country=GB`, at a
    fixed 20 %, on `tax_behavior=exclusive` prices, rounded half up to the minor unit; everywhere
    else the tax is 0, as for a seller registered only there. Stripe Tax decides by the
    seller's registrations and the product's tax code; here nothing else is looked at.
    The paid session's `amount_subtotal` is the price, `total_details.amount_tax` the tax and
    `amount_total` both, and the PaymentIntent takes the total.
  - `POST /v1/invoices` (`customer`, `currency`, `collection_method`, `auto_advance`,
    `description`, `metadata`), `POST /v1/invoiceitems` (`customer`, `invoice`, `amount`,
    `currency`, `description`) on a draft, `GET /v1/invoices/{id}`,
    `POST /v1/invoices/{id}/finalize` (draft to open; `auto_advance=false` never collects),
    `POST /v1/invoices/{id}/attach_payment` (`payment_intent`: a succeeded PaymentIntent of the
    same customer and currency is credited at once; paid in full, the invoice is `paid` and
    `invoice.paid` is sent; a PaymentIntent already attached elsewhere is refused), and
    `POST /v1/invoices/{id}/pay` with `paid_out_of_band=true` only, `POST /v1/invoices/{id}/void`
    (an open invoice only; no `invoice.voided` event is sent), and `GET /v1/invoices`
    (`customer` only; one page, no `limit` or cursors). Stripe also pays an invoice
    by charging the customer's card; here nothing ever does, so a test can see that an invoice
    never charges twice. No emails, no invoice numbering, no credit notes: a refund leaves the
    invoice as it was (Stripe does too; its credit notes are separate).
  - `GET /_config/invoices/{id}` (the invoice's `hosted_invoice_url`: an HTML receipt) and
    `GET /_config/invoices/{id}/pdf` (its `invoice_pdf`: a one-page PDF), without an API key,
    as Stripe's hosted pages are.
  - Idempotency keys are kept for as long as the process runs (Stripe keeps them about a day).
    `POST /_config/faults` plays what Stripe does otherwise, for one test at a time:
    `forget_keys_containing=<text>` drops the keys that contain it (a replay a day later);
    `attach_down=<customer>` makes every `attach_payment` to that customer's invoices answer
    503 and change nothing (Stripe out of reach), `attach_up=<customer>` ends it.

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
                 success_url=None, cancel_url=None, invoice_creation=None, automatic_tax=None,
                 billing_address_collection=None, customer_update=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        try:
            assert mode == "payment"
            assert customer is None or (isinstance(customer, str) and customer.startswith("cus_"))
            assert isinstance(line_items, list) and line_items
            currencies, total, exclusive = set(), 0, True
            for item in line_items:
                price = item["price_data"]
                amount, quantity = int(price["unit_amount"]), int(item.get("quantity", 1))
                assert amount > 0 and quantity > 0 and price["product_data"]["name"]
                currencies.add(price["currency"])
                total += amount * quantity
                exclusive = exclusive and price.get("tax_behavior") == "exclusive"
            taxed = _true((automatic_tax or {}).get("enabled"))
            if taxed:
                # Stripe needs the customer's address for tax: collected, and kept on the
                # customer when there is one.
                assert billing_address_collection == "required"
                assert customer is None or (customer_update or {}).get("address") == "auto"
                assert exclusive
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
        self.automatic_tax = {"enabled": taxed, "liability": None, "provider": None,
                              "status": "requires_location_inputs" if taxed else None}
        self.total_details = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
        self.invoice = None
        self._invoice_creation = invoice_creation if _true((invoice_creation or {}).get("enabled")) else None
        self._lines = [(item["price_data"]["product_data"]["name"],
                        int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1)))
                       for item in line_items]
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

    def _address(self, country):
        # The billing address the customer typed: it decides the tax.
        if self.automatic_tax["enabled"]:
            tax = _tax(self.amount_subtotal, country)
            self.total_details["amount_tax"] = tax
            self.amount_total = self.amount_subtotal + tax
            self.automatic_tax["status"] = "complete"

    def _invoiced(self, pi):
        # Checkout's own invoice of the payment (`invoice_creation`), paid by it.
        if self._invoice_creation is None:
            return
        data = self._invoice_creation.get("invoice_data") or {}
        inv = Invoice(customer=self.customer, currency=self.currency, metadata=dict(data.get("metadata") or {}),
                      description=data.get("description"), collection_method="charge_automatically",
                      auto_advance="false")
        for name, amount in self._lines:
            inv._add_line(name, amount)
        inv._tax = self.total_details["amount_tax"]
        inv._finalize()
        inv._credit(pi)
        self.invoice = inv.id
        return inv

    def _pay(self, card, delayed, country="US"):
        self._open()
        self._address(country)
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
        invoice = self._invoiced(pi)
        self._announce("checkout.session.completed")
        if invoice is not None:
            invoice._announce_paid()
        return self

    def _settle(self, outcome):
        if self._settles is None or self.payment_status != "unpaid":
            raise UserError(400, "Nothing to settle.")
        if outcome == "succeeded":
            pi = self._intent("4242424242424242")
            self.payment_intent, self.payment_status = pi.id, "paid"
            invoice = self._invoiced(pi)
            self._announce("checkout.session.async_payment_succeeded")
            if invoice is not None:
                invoice._announce_paid()
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
    card = data.get("card") or "4242424242424242"
    return _answer(request, _session(request)._pay(card, delayed, (data.get("country") or "US").upper()))


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
            ("pay", '<input type="hidden" name="country" value="GB">',
             "Pay with test card 4242, billing address in GB (20 % tax when taxed)"),
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


# ---- Invoices and tax ---------------------------------------------------------------------

# The test address's tax, in basis points; nowhere else is taxed.
TAX_BPS = {"GB": 2000}


def _true(v):
    return v is True or str(v).lower() == "true"


def _tax(subtotal, country):
    bps = TAX_BPS.get(country, 0)
    return (subtotal * bps + 5000) // 10000


class Invoice(StripeObject):
    object = "invoice"
    _id_prefix = "in_"

    def __init__(self, customer=None, currency=None, collection_method=None, auto_advance=None,
                 description=None, metadata=None, days_until_due=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        try:
            assert isinstance(customer, str) and customer.startswith("cus_")
            assert isinstance(currency, str) and currency
            assert collection_method in (None, "charge_automatically", "send_invoice")
            assert metadata is None or isinstance(metadata, dict)
        except AssertionError:
            raise UserError(400, "Bad request")
        resources.Customer._api_retrieve(customer)
        super().__init__()
        self.customer = customer
        self.currency = currency.lower()
        self.collection_method = collection_method or "charge_automatically"
        self.auto_advance = _true(auto_advance) if auto_advance is not None else True
        self.description = description
        self.metadata = metadata or {}
        self.status = "draft"
        self.amount_paid = 0
        self.status_transitions = {"finalized_at": None, "paid_at": None, "voided_at": None,
                                   "marked_uncollectible_at": None}
        self.lines = {"object": "list", "data": [], "has_more": False, "url": f"/v1/invoices/{self.id}/lines"}
        self.hosted_invoice_url = None
        self.invoice_pdf = None
        self.paid_out_of_band = False
        self._tax = 0
        self._payments = []

    @property
    def subtotal(self):
        return sum(line["amount"] for line in self.lines["data"])

    @property
    def total_taxes(self):
        return [{"amount": self._tax, "tax_behavior": "exclusive", "taxability_reason": "standard_rated"}] \
            if self._tax else []

    @property
    def total(self):
        return self.subtotal + self._tax

    @property
    def amount_due(self):
        return self.total

    @property
    def amount_remaining(self):
        return max(0, self.total - self.amount_paid)

    def _add_line(self, description, amount):
        if self.status != "draft":
            raise UserError(400, "Lines can only be added to a draft invoice.")
        self.lines["data"].append({"object": "line_item", "id": "il_" + resources.random_id(14),
                                   "amount": int(amount), "currency": self.currency,
                                   "description": description})

    def _finalize(self):
        if self.status != "draft":
            raise UserError(400, "This invoice is already finalized.")
        self.status = "open"
        self.status_transitions["finalized_at"] = int(time.time())
        base = f"http://127.0.0.1:{PORT}/_config/invoices/{self.id}"
        self.hosted_invoice_url, self.invoice_pdf = base, base + "/pdf"
        if self.total == 0:
            self._paid()

    def _paid(self):
        self.status = "paid"
        self.status_transitions["paid_at"] = int(time.time())

    def _credit(self, pi):
        # A succeeded PaymentIntent counts toward the invoice; none is ever charged here.
        self._payments.append(pi.id)
        self.amount_paid += pi.amount
        if self.amount_paid >= self.total:
            self._paid()

    def _announce_paid(self):
        schedule_webhook(Event("invoice.paid", self))

    def _attach(self, payment_intent):
        if self.status != "open":
            raise UserError(400, "Only an open invoice takes a payment.")
        pi = PaymentIntent._api_retrieve(payment_intent)
        if pi.customer != self.customer or pi.currency != self.currency:
            raise UserError(400, "The PaymentIntent is another customer's or in another currency.")
        if any(payment_intent in inv._payments for inv in _invoices()):
            raise UserError(400, "This PaymentIntent is already attached to an invoice.")
        if pi.status != "succeeded":
            raise UserError(400, "Only a succeeded PaymentIntent is credited here.")
        self._credit(pi)
        if self.status == "paid":
            self._announce_paid()
        return self

    def _void(self):
        if self.status != "open":
            raise UserError(400, "Only an open invoice can be voided.")
        self.status = "void"
        self.status_transitions["voided_at"] = int(time.time())
        return self

    def _pay_out_of_band(self):
        if self.status != "open":
            raise UserError(400, "Only an open invoice can be paid.")
        self.paid_out_of_band = True
        self.amount_paid = self.total
        self._paid()
        self._announce_paid()
        return self


def _invoices():
    return [o for o in resources.store.values() if isinstance(o, Invoice)]


def _invoice(id_):
    return Invoice._api_retrieve(id_)


async def _invoice_routes(request):
    """The invoice API, or None for any other path."""
    path, method = request.path, request.method
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "invoiceitems"] and len(parts) == 2 and method == "POST":
        data = await get_post_data(request) or {}
        inv = _invoice(data.get("invoice") or "")
        try:
            assert data.get("customer") == inv.customer
            assert (data.get("currency") or inv.currency).lower() == inv.currency
            amount = int(data["amount"])
        except (AssertionError, KeyError, TypeError, ValueError):
            raise UserError(400, "Bad request")
        inv._add_line(data.get("description") or "Invoice item", amount)
        return json_response({"object": "invoiceitem", "id": "ii_" + resources.random_id(14),
                              "invoice": inv.id, "amount": amount, "currency": inv.currency,
                              "customer": inv.customer, "description": data.get("description")})
    if parts[:2] != ["v1", "invoices"]:
        return None
    if len(parts) == 2 and method == "POST":
        data = await get_post_data(request) or {}
        data.pop("expand", None)
        return json_response(Invoice._api_create(**data)._export())
    if len(parts) == 2 and method == "GET":
        customer = request.query.get("customer")
        data = [i._export() for i in _invoices() if customer is None or i.customer == customer]
        return json_response({"object": "list", "data": data, "has_more": False, "url": "/v1/invoices"})
    if len(parts) == 3 and method == "GET":
        return json_response(_invoice(parts[2])._export())
    if len(parts) == 4 and method == "POST":
        inv, action = _invoice(parts[2]), parts[3]
        data = await get_post_data(request) or {}
        if action == "finalize":
            inv._finalize()
        elif action == "attach_payment":
            if inv.customer in _attach_down:
                raise UserError(503, "Stripe is unavailable (attach_payment, /_config/faults)")
            inv._attach(data.get("payment_intent") or "")
        elif action == "void":
            inv._void()
        elif action == "pay" and _true(data.get("paid_out_of_band")):
            inv._pay_out_of_band()
        else:
            raise UserError(400, "Not supported by this adapter: " + action)
        return json_response(inv._export())
    raise UserError(405, "Method Not Allowed")


@web.middleware
async def invoices(request, handler):
    answer = await _invoice_routes(request)
    return answer if answer is not None else await handler(request)


def _money(cents, currency):
    return f"{cents / 100:.2f} {currency.upper()}"


async def _receipt_page(request):
    inv = _invoice(request.match_info["id"])
    rows = "".join(f"<tr><td>{html.escape(line['description'] or '')}</td>"
                   f"<td>{_money(line['amount'], inv.currency)}</td></tr>" for line in inv.lines["data"])
    body = (f"<!doctype html><title>Receipt {html.escape(inv.id)}</title><h1>Receipt (test only)</h1>"
            f"<p>Invoice {html.escape(inv.id)}, {html.escape(inv.status)}</p><table>{rows}"
            f"<tr><th>Subtotal</th><td>{_money(inv.subtotal, inv.currency)}</td></tr>"
            f"<tr><th>Tax</th><td>{_money(inv._tax, inv.currency)}</td></tr>"
            f"<tr><th>Total</th><td>{_money(inv.total, inv.currency)}</td></tr>"
            f"<tr><th>Paid</th><td>{_money(inv.amount_paid, inv.currency)}</td></tr></table>")
    return web.Response(text=body, content_type="text/html")


def _pdf(lines):
    """A one-page PDF with `lines` of text (Helvetica), byte offsets exact."""
    text = "BT /F1 12 Tf 50 780 Td 16 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*" for line in lines
    ) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = "%PDF-1.4\n", []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n"
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return out.encode("latin-1", "replace")


async def _receipt_pdf(request):
    inv = _invoice(request.match_info["id"])
    lines = [f"Receipt (test only): invoice {inv.id}, {inv.status}"]
    lines += [f"{line['description']}: {_money(line['amount'], inv.currency)}" for line in inv.lines["data"]]
    lines += [f"Subtotal {_money(inv.subtotal, inv.currency)}", f"Tax {_money(inv._tax, inv.currency)}",
              f"Total {_money(inv.total, inv.currency)}"]
    return web.Response(body=_pdf(lines), content_type="application/pdf")


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
app.router.add_get("/_config/invoices/{id}", _receipt_page)
app.router.add_get("/_config/invoices/{id}/pdf", _receipt_pdf)

_first_responses: dict = {}
_attach_down: set = set()


async def _set_faults(request):
    # See the module's docstring: faults per customer, keys forgotten by what they contain.
    data = await get_post_data(request) or {}
    if data.get("attach_down"):
        _attach_down.add(data["attach_down"])
    if data.get("attach_up"):
        _attach_down.discard(data["attach_up"])
    text = data.get("forget_keys_containing")
    forgotten = [slot for slot in _first_responses if text and text in slot[1]]
    for slot in forgotten:
        del _first_responses[slot]
    return json_response({"attach_down": sorted(_attach_down), "forgotten": len(forgotten)})


app.router.add_post("/_config/faults", _set_faults)


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
# Innermost: after localstripe's errors and API keys, before its own (older) invoice routes.
app.middlewares.append(invoices)


def main() -> None:
    global PORT
    PORT = int(sys.argv[1])
    web.run_app(app, host="127.0.0.1", port=PORT, print=None)


if __name__ == "__main__":
    main()
