"""Every operation of infra/openapi.yaml that a client calls: its `operationId`, method, path and
the `Client` method that calls it. The client builds each request from this table, and the test
suite holds the table to the document (tests/test_routes.py), so a route added to the API
without a method here fails the tests.
"""

from __future__ import annotations

from typing import Dict, NamedTuple


class Operation(NamedTuple):
    method: str
    path: str
    #: The `Client` method that calls it.
    client_method: str
    #: Whether a request that may have reached the server can be sent again: true for reads,
    #: PUTs, deletes and every POST that carries an idempotency key or is documented as safe to
    #: repeat. The others are retried only after an answer that says nothing was done (429, 503).
    repeatable: bool = True


OPERATIONS: Dict[str, Operation] = {
    "putAccount": Operation("PUT", "/v1/accounts/{account_id}", "put_account"),
    "getCredits": Operation("GET", "/v1/accounts/{account_id}/credits", "credits"),
    "getTransactions": Operation("GET", "/v1/accounts/{account_id}/credits/transactions", "transactions"),
    "getTransactionsCsv": Operation("GET", "/v1/accounts/{account_id}/credits/transactions.csv", "transactions_csv"),
    "getGrants": Operation("GET", "/v1/accounts/{account_id}/credits/grants", "grants"),
    "voidGrant": Operation("POST", "/v1/accounts/{account_id}/credits/grants/{grant_id}/void", "void_grant"),
    "postAdjustment": Operation("POST", "/v1/accounts/{account_id}/credits/adjustments", "adjust"),
    "putAutoRecharge": Operation("PUT", "/v1/accounts/{account_id}/credits/auto-recharge", "set_auto_recharge"),
    "checkCredits": Operation("GET", "/v1/accounts/{account_id}/credits/check", "check"),
    "putAlerts": Operation("PUT", "/v1/accounts/{account_id}/credits/alerts", "set_alerts"),
    "putLanes": Operation("PUT", "/v1/accounts/{account_id}/lanes", "set_lanes"),
    "listEntities": Operation("GET", "/v1/accounts/{account_id}/entities", "entities"),
    "getEntity": Operation("GET", "/v1/accounts/{account_id}/entities/{entity}", "entity"),
    "putEntity": Operation("PUT", "/v1/accounts/{account_id}/entities/{entity}", "set_entity"),
    "getNotifications": Operation("GET", "/v1/accounts/{account_id}/notifications", "notifications"),
    "postUsage": Operation("POST", "/v1/accounts/{account_id}/usage", "debit"),
    "postUsageBatch": Operation("POST", "/v1/accounts/{account_id}/usage/batch", "debit_batch"),
    "postHold": Operation("POST", "/v1/accounts/{account_id}/usage/holds", "hold"),
    "settleHold": Operation("POST", "/v1/accounts/{account_id}/usage/holds/{hold_id}/settle", "settle_hold"),
    "postPurchase": Operation("POST", "/v1/accounts/{account_id}/credits/purchases", "purchase"),
    "getPurchase": Operation("GET", "/v1/accounts/{account_id}/credits/purchases/{purchase_id}", "get_purchase"),
    "listPurchases": Operation("GET", "/v1/accounts/{account_id}/credits/purchases", "purchases"),
    "setupCard": Operation("POST", "/v1/accounts/{account_id}/payment-method/setup", "setup_card"),
    "removeCard": Operation("DELETE", "/v1/accounts/{account_id}/payment-method", "remove_card"),
    "getRevenueReport": Operation("GET", "/v1/reports/revenue", "revenue_report"),
    "createWebhookEndpoint": Operation("POST", "/v1/webhook-endpoints", "create_webhook_endpoint", repeatable=False),
    "listWebhookEndpoints": Operation("GET", "/v1/webhook-endpoints", "webhook_endpoints"),
    "getWebhookEndpoint": Operation("GET", "/v1/webhook-endpoints/{endpoint_id}", "webhook_endpoint"),
    "deleteWebhookEndpoint": Operation("DELETE", "/v1/webhook-endpoints/{endpoint_id}", "delete_webhook_endpoint"),
    "rotateWebhookSecret": Operation("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret", "rotate_webhook_secret",
                                     repeatable=False),
    "enableWebhookEndpoint": Operation("POST", "/v1/webhook-endpoints/{endpoint_id}/enable", "enable_webhook_endpoint"),
    "listWebhookDeliveries": Operation("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries", "webhook_deliveries"),
    "redeliverWebhook": Operation("POST", "/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
                                  "redeliver_webhook", repeatable=False),
    # Staff and the service (rules §19).
    "getAudit": Operation("GET", "/v1/audit", "audit"),
    "searchAccounts": Operation("GET", "/v1/accounts", "search_accounts"),
    "getAccountDetails": Operation("GET", "/v1/accounts/{account_id}/details", "account_details"),
    "getPayments": Operation("GET", "/v1/accounts/{account_id}/payments", "payments"),
    "refundPayment": Operation("POST", "/v1/accounts/{account_id}/payments/{payment_id}/refund", "refund_payment"),
    "getReconciliation": Operation("GET", "/v1/reconciliation", "reconciliation"),
    "getDeadLetters": Operation("GET", "/v1/dead-letters", "dead_letters"),
}

#: Operations of the document a client does not call, and why. The route test fails if one of
#: these leaves the document too (so the list cannot go stale).
NOT_FOR_CLIENTS: Dict[str, str] = {
    "stripeWebhook": "Stripe calls it, signed with Stripe's secret",
    "billingPage": "an HTML page a person opens in a browser",
    "consolePage": "the console for staff, an HTML page a person opens in a browser",
    "creditsCardScript": "the <topup-credits> element's script, loaded by a browser (the TypeScript package has it)",
}
