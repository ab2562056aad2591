/**
 * Every operation of infra/openapi.yaml that a client calls: its `operationId`, method, path and
 * the `Topup` method that calls it. The client builds each request from this table, and the test
 * suite holds the table to the document (test/routes.test.mjs), so a route added to the API
 * without a method here fails the tests.
 */
export interface Operation {
  readonly method: "GET" | "PUT" | "POST" | "DELETE";
  readonly path: string;
  /** The `Topup` method that calls it. */
  readonly clientMethod: string;
  /**
   * Whether a request that may have reached the server can be sent again: true for reads, PUTs,
   * deletes and every POST with an idempotency key or documented as safe to repeat. The others
   * are retried only after an answer that says nothing was done (429, 503).
   */
  readonly repeatable: boolean;
}

const op = (method: Operation["method"], path: string, clientMethod: string, repeatable = true): Operation =>
  ({ method, path, clientMethod, repeatable });

export const OPERATIONS = {
  putAccount: op("PUT", "/v1/accounts/{account_id}", "putAccount"),
  getCredits: op("GET", "/v1/accounts/{account_id}/credits", "credits"),
  getTransactions: op("GET", "/v1/accounts/{account_id}/credits/transactions", "transactions"),
  getTransactionsCsv: op("GET", "/v1/accounts/{account_id}/credits/transactions.csv", "transactionsCsv"),
  getGrants: op("GET", "/v1/accounts/{account_id}/credits/grants", "grants"),
  voidGrant: op("POST", "/v1/accounts/{account_id}/credits/grants/{grant_id}/void", "voidGrant"),
  postAdjustment: op("POST", "/v1/accounts/{account_id}/credits/adjustments", "adjust"),
  putAutoRecharge: op("PUT", "/v1/accounts/{account_id}/credits/auto-recharge", "setAutoRecharge"),
  checkCredits: op("GET", "/v1/accounts/{account_id}/credits/check", "check"),
  putAlerts: op("PUT", "/v1/accounts/{account_id}/credits/alerts", "setAlerts"),
  putLanes: op("PUT", "/v1/accounts/{account_id}/lanes", "setLanes"),
  listEntities: op("GET", "/v1/accounts/{account_id}/entities", "entities"),
  getEntity: op("GET", "/v1/accounts/{account_id}/entities/{entity}", "entity"),
  putEntity: op("PUT", "/v1/accounts/{account_id}/entities/{entity}", "setEntity"),
  getNotifications: op("GET", "/v1/accounts/{account_id}/notifications", "notifications"),
  postUsage: op("POST", "/v1/accounts/{account_id}/usage", "debit"),
  postUsageBatch: op("POST", "/v1/accounts/{account_id}/usage/batch", "debitBatch"),
  postHold: op("POST", "/v1/accounts/{account_id}/usage/holds", "hold"),
  settleHold: op("POST", "/v1/accounts/{account_id}/usage/holds/{hold_id}/settle", "settleHold"),
  postPurchase: op("POST", "/v1/accounts/{account_id}/credits/purchases", "purchase"),
  getPurchase: op("GET", "/v1/accounts/{account_id}/credits/purchases/{purchase_id}", "getPurchase"),
  listPurchases: op("GET", "/v1/accounts/{account_id}/credits/purchases", "purchases"),
  setupCard: op("POST", "/v1/accounts/{account_id}/payment-method/setup", "setupCard"),
  removeCard: op("DELETE", "/v1/accounts/{account_id}/payment-method", "removeCard"),
  getRevenueReport: op("GET", "/v1/reports/revenue", "revenueReport"),
  createWebhookEndpoint: op("POST", "/v1/webhook-endpoints", "createWebhookEndpoint", false),
  listWebhookEndpoints: op("GET", "/v1/webhook-endpoints", "webhookEndpoints"),
  getWebhookEndpoint: op("GET", "/v1/webhook-endpoints/{endpoint_id}", "webhookEndpoint"),
  deleteWebhookEndpoint: op("DELETE", "/v1/webhook-endpoints/{endpoint_id}", "deleteWebhookEndpoint"),
  rotateWebhookSecret: op("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret", "rotateWebhookSecret", false),
  enableWebhookEndpoint: op("POST", "/v1/webhook-endpoints/{endpoint_id}/enable", "enableWebhookEndpoint"),
  listWebhookDeliveries: op("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries", "webhookDeliveries"),
  redeliverWebhook: op("POST", "/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    "redeliverWebhook", false),
  // Staff and the service (rules §19).
  getAudit: op("GET", "/v1/audit", "audit"),
  searchAccounts: op("GET", "/v1/accounts", "searchAccounts"),
  getAccountDetails: op("GET", "/v1/accounts/{account_id}/details", "accountDetails"),
  getPayments: op("GET", "/v1/accounts/{account_id}/payments", "payments"),
  refundPayment: op("POST", "/v1/accounts/{account_id}/payments/{payment_id}/refund", "refundPayment"),
  getReconciliation: op("GET", "/v1/reconciliation", "reconciliation"),
  getDeadLetters: op("GET", "/v1/dead-letters", "deadLetters"),
} as const satisfies Record<string, Operation>;

export type OperationId = keyof typeof OPERATIONS;

/** Operations of the document a client does not call, and why (the route test fails if one leaves the document). */
export const NOT_FOR_CLIENTS: Readonly<Record<string, string>> = {
  stripeWebhook: "Stripe calls it, signed with Stripe's secret",
  billingPage: "an HTML page a person opens in a browser",
  consolePage: "the console for staff, an HTML page a person opens in a browser",
  creditsCardScript: "the <topup-credits> element's script, loaded by a browser (this package's card entry)",
};
