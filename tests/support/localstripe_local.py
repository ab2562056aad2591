"""localstripe on 127.0.0.1 only, from scratch, with what real Stripe does and it lacks.

- localstripe's own `start()` binds every interface ('::') and reloads state from a pickle in
  the system temp folder unless told otherwise: this serves the same aiohttp app on loopback
  with an empty store.
- Response fields that async-stripe 1.0.0-rc.10 requires and localstripe omits
  (LOCAL_STACK.md) are filled with Stripe's values for the case: PaymentIntent
  `amount_capturable`, `amount_received`, `confirmation_method`, `payment_method_types`,
  `last_payment_error.type`; Charge `amount_captured`, `billing_details`, `disputed`; Event
  `pending_webhooks`, `request`.
- `Idempotency-Key` on POST: Stripe returns the first response to a repeated key instead of
  acting twice; localstripe ignores the header. Here the first response is kept per key and
  path and replayed.

Checkout Sessions (which localstripe lacks entirely) come with the purchase flow.

Usage: python localstripe_local.py PORT
"""

import sys

from aiohttp import web
from localstripe import resources
from localstripe.server import app


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
    port = int(sys.argv[1])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
