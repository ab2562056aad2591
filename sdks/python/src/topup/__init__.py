"""topup: the Python client of the topup prepaid-credits API.

    import topup

    client = topup.Client("https://billing.example.com", token)
    client.debit("acme", "api_calls", 1500)              # → {"from_allowance", "from_credits", "balance", ...}
    client.check("acme", "api_calls", 1500)              # → {"allowed", "reason", "cost", "available"}
    event = topup.verify_webhook(body, header, secret)   # or raises topup.SignatureError
"""

from .batch import DebitBatcher
from .client import Client, __version__, new_idempotency_key
from .errors import SignatureError, TopupError
from .operations import NOT_FOR_CLIENTS, OPERATIONS, Operation
from .webhooks import SIGNATURE_HEADER, sign_webhook, verify_webhook

__all__ = [
    "Client",
    "DebitBatcher",
    "NOT_FOR_CLIENTS",
    "OPERATIONS",
    "Operation",
    "SIGNATURE_HEADER",
    "SignatureError",
    "TopupError",
    "__version__",
    "new_idempotency_key",
    "sign_webhook",
    "verify_webhook",
]
