import { TopupError, type ErrorBody } from "./errors.js";
import { OPERATIONS, type OperationId } from "./operations.js";
import type {
  Account, Alerts, AuditRecord, BatchResult, BillingContact, CheckAnswer, CreditsView, Debit, DebitRequest, Entity, Grant, Hold,
  LedgerEntry, Lanes, Notification, Purchase, RevenueReport, Settlement, TransactionsPage, WebhookDelivery,
  WebhookEndpoint, WebhookEndpointWithSecret,
  PurchaseListItem,
} from "./types.js";

export const VERSION = "0.1.0";

/** Statuses after which a request is sent again (throttled, busy, AWS or Stripe briefly unavailable). */
export const RETRY_STATUSES: ReadonlySet<number> = new Set([429, 502, 503, 504]);
/** Of those, the ones that say nothing was done, so that even a request without a key may be sent again. */
const NOT_DONE_STATUSES: ReadonlySet<number> = new Set([429, 503]);

export type TokenSource = string | (() => string | Promise<string>);

export interface TopupOptions {
  /** The API's address, e.g. `https://billing.example.com`. */
  baseUrl: string;
  /** The bearer token, or a function answering a current one (asked before every request). */
  token: TokenSource;
  /** Retries after the first attempt (default 4). */
  maxRetries?: number;
  /** First backoff in ms, doubled each retry up to `maxBackoffMs`, with jitter (defaults 200, 8000). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** A `Retry-After` longer than this is shortened to it (default 60,000 ms). */
  maxRetryAfterMs?: number;
  /** Per-attempt timeout (default 30,000 ms). */
  timeoutMs?: number;
  /** Another `fetch` (default: the global one). */
  fetch?: typeof fetch;
}

/** A fresh idempotency key (a random UUID). */
export async function newIdempotencyKey(): Promise<string> {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  // Node 18 has no global `crypto`; its module has the same function.
  const name = "node:crypto";
  const mod = await import(/* webpackIgnore: true */ /* @vite-ignore */ name);
  return mod.randomUUID() as string;
}

interface Call {
  path?: Record<string, string>;
  query?: Record<string, string | number | undefined | null>;
  body?: unknown;
  headers?: Record<string, string>;
  text?: boolean;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * A client of one topup deployment: one method per operation of the API (infra/openapi.yaml).
 *
 * Every method answers the JSON body of its success (the CSV export as text) or throws a
 * {@link TopupError}. Calls that debit, grant, reserve or buy carry an idempotency key: one is made
 * when you give none and sent on every retry, so a retry never charges twice. 429, 502, 503, 504
 * and network errors are retried with exponential backoff and jitter, never sooner than
 * `Retry-After`.
 */
export class Topup {
  readonly baseUrl: string;
  private readonly token: TokenSource;
  private readonly maxRetries: number;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly maxRetryAfterMs: number;
  private readonly timeoutMs: number;
  private readonly fetchFn: typeof fetch;
  /** How the client waits between attempts (replaceable in tests). */
  sleep: (ms: number) => Promise<void> = sleep;

  constructor(options: TopupOptions) {
    if (!options || !options.baseUrl) throw new TypeError("baseUrl is required");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.token = options.token;
    this.maxRetries = Math.max(0, options.maxRetries ?? 4);
    this.backoffMs = options.backoffMs ?? 200;
    this.maxBackoffMs = options.maxBackoffMs ?? 8000;
    this.maxRetryAfterMs = options.maxRetryAfterMs ?? 60_000;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.fetchFn = options.fetch ?? ((input, init) => fetch(input, init));
  }

  // ---- accounts --------------------------------------------------------------------------------

  /** Creates or updates an account (service): its plan and up to ten billing contacts. */
  putAccount(accountId: string, account: { plan: string; billingContacts: BillingContact[] }): Promise<Account> {
    return this.call("putAccount", { path: { account_id: accountId },
      body: { plan: account.plan, billing_contacts: account.billingContacts } });
  }

  /** The credits view: balance, low-balance flag, lifetime totals, recent transactions, allowances, auto-recharge, card, unit, alerts (view roles). */
  credits(accountId: string): Promise<CreditsView> {
    return this.call("getCredits", { path: { account_id: accountId } });
  }

  /** One page of the ledger, newest first (view roles); pass `next_cursor` back as `cursor`, or use {@link iterTransactions}. */
  transactions(accountId: string, options: { limit?: number; cursor?: string; entity?: string } = {}): Promise<TransactionsPage> {
    return this.call("getTransactions", { path: { account_id: accountId },
      query: { limit: options.limit, cursor: options.cursor, entity: options.entity } });
  }

  /** Every ledger entry, newest first, fetching pages of `pageSize` as you iterate (`for await`). */
  iterTransactions(accountId: string, options: { pageSize?: number; entity?: string } = {}): AsyncIterable<LedgerEntry> {
    return pages((cursor) => this.transactions(accountId, { limit: options.pageSize ?? 100, cursor, entity: options.entity }),
      (page) => page.transactions);
  }

  /** The whole ledger as CSV text, newest first (view roles). */
  transactionsCsv(accountId: string): Promise<string> {
    return this.call("getTransactionsCsv", { path: { account_id: accountId }, text: true });
  }

  /** Active grants in burn order, then the ended ones (view roles). */
  grants(accountId: string): Promise<{ grants: Grant[] }> {
    return this.call("getGrants", { path: { account_id: accountId } });
  }

  /** Removes what remains of a grant (service); voiding an ended grant answers it as it is. */
  voidGrant(accountId: string, grantId: string, options: { reason?: string } = {}): Promise<Grant> {
    return this.call("voidGrant", { path: { account_id: accountId, grant_id: grantId }, body: clean({ reason: options.reason }) });
  }

  /**
   * Grants (`amount` > 0) or takes back (< 0) micro-credits (service). A grant may carry
   * `expiresAt` (RFC 3339), `priority` (0–100), `category` and, when paid, `charge`.
   */
  async adjust(accountId: string, adjustment: {
    amount: number; reason: string; idempotencyKey?: string; expiresAt?: string; priority?: number;
    category?: "promotional" | "paid"; charge?: { amount: number; currency: string };
  }): Promise<LedgerEntry> {
    const body = clean({
      amount: adjustment.amount, reason: adjustment.reason,
      idempotency_key: adjustment.idempotencyKey ?? await newIdempotencyKey(),
      expires_at: adjustment.expiresAt, priority: adjustment.priority, category: adjustment.category, charge: adjustment.charge,
    });
    return this.call("postAdjustment", { path: { account_id: accountId }, body });
  }

  /** Auto-recharge settings (billing roles): below `threshold`, buy `amount`, at most `monthlyMax` times a month. */
  setAutoRecharge(accountId: string, settings: {
    enabled: boolean; threshold?: number; amount?: number; monthlyMax?: number; monthlySpendMax?: number;
  }): Promise<CreditsView["auto_recharge"]> {
    return this.call("putAutoRecharge", { path: { account_id: accountId }, body: clean({
      enabled: settings.enabled, threshold: settings.threshold, amount: settings.amount,
      monthly_max: settings.monthlyMax, monthly_spend_max: settings.monthlySpendMax,
    }) });
  }

  /**
   * Would this debit be allowed now? Writes and reserves nothing (view roles). Call it as
   * `check(accountId, { consumable, quantity, entity? })` or `check(accountId, consumable, quantity, entity?)`.
   */
  check(accountId: string, request: { consumable: string; quantity: number; entity?: string }): Promise<CheckAnswer>;
  check(accountId: string, consumable: string, quantity: number, entity?: string): Promise<CheckAnswer>;
  check(accountId: string, a: string | { consumable: string; quantity: number; entity?: string }, quantity?: number,
        entity?: string): Promise<CheckAnswer> {
    const r = typeof a === "string" ? { consumable: a, quantity: quantity as number, entity } : a;
    return this.call("checkCredits", { path: { account_id: accountId },
      query: { consumable: r.consumable, quantity: r.quantity, entity: r.entity } });
  }

  /** Replaces the account's balance alerts: up to five thresholds in micro-credits; `[]` removes them (billing roles). */
  setAlerts(accountId: string, thresholds: number[]): Promise<Alerts> {
    return this.call("putAlerts", { path: { account_id: accountId }, body: { thresholds } });
  }

  /** Fixes a hot account's lanes at `lanes`, 1 to 64; 1: the account alone, and it never
   *  spreads itself (service). */
  setLanes(accountId: string, lanes: number): Promise<Lanes> {
    return this.call("putLanes", { path: { account_id: accountId }, body: { lanes } });
  }

  /** Lets a hot account spread itself between `min` and `max` lanes (defaults 1 and 64: the
   *  default policy) (service). */
  setLaneBounds(accountId: string, bounds: { min?: number; max?: number }): Promise<Lanes> {
    return this.call("putLanes", { path: { account_id: accountId }, body: { min: bounds.min ?? 1, max: bounds.max ?? 64 } });
  }

  // ---- entities ----------------------------------------------------------------------------------

  /** Every member, project or key with its monthly limit and this month's spend (view roles). */
  entities(accountId: string): Promise<{ entities: Entity[] }> {
    return this.call("listEntities", { path: { account_id: accountId } });
  }

  /** One entity's monthly limit and spend this month (view roles). */
  entity(accountId: string, entity: string): Promise<Entity> {
    return this.call("getEntity", { path: { account_id: accountId, entity } });
  }

  /** Sets an entity's `monthlyLimit` (null for none) and `name`; what you leave out stays. */
  setEntity(accountId: string, entity: string, settings: { monthlyLimit?: number | null; name?: string | null }): Promise<Entity> {
    const body: Record<string, unknown> = {};
    if (settings.monthlyLimit !== undefined) body.monthly_limit = settings.monthlyLimit;
    if (settings.name !== undefined) body.name = settings.name;
    return this.call("putEntity", { path: { account_id: accountId, entity }, body });
  }

  /** The emails and SMS sent about the account, newest first (view roles). */
  notifications(accountId: string, options: { limit?: number } = {}): Promise<{ notifications: Notification[] }> {
    return this.call("getNotifications", { path: { account_id: accountId }, query: { limit: options.limit } });
  }

  // ---- usage ---------------------------------------------------------------------------------------

  /**
   * Debits usage: the month's allowance first, then credits (service). The same key again answers
   * the same. Out of credits (or past the entity's monthly limit) throws a {@link TopupError} with
   * status 402 and the consumable's code.
   */
  async debit(accountId: string, request: DebitRequest): Promise<Debit> {
    const body = clean({ consumable: request.consumable, quantity: request.quantity,
      idempotency_key: request.idempotencyKey ?? await newIdempotencyKey(), entity: request.entity ?? undefined });
    return this.call("postUsage", { path: { account_id: accountId }, body });
  }

  /**
   * Debits up to 500 events at once, each on its own (service); an event without a key gets one.
   * Each result's `status` is what a single debit would have answered. See `DebitBatcher`
   * for batching single debits.
   */
  async debitBatch(accountId: string, events: DebitRequest[]): Promise<{ results: BatchResult[] }> {
    const out = [];
    for (const e of events) {
      out.push(clean({ consumable: e.consumable, quantity: e.quantity,
        idempotency_key: e.idempotencyKey ?? await newIdempotencyKey(), entity: e.entity ?? undefined }));
    }
    return this.call("postUsageBatch", { path: { account_id: accountId }, body: { events: out } });
  }

  /** Reserves credits for a metered session (service); settle it with {@link settleHold}. */
  async hold(accountId: string, request: DebitRequest & { ttlSeconds?: number }): Promise<Hold> {
    const body = clean({ consumable: request.consumable, quantity: request.quantity,
      idempotency_key: request.idempotencyKey ?? await newIdempotencyKey(), ttl_seconds: request.ttlSeconds,
      entity: request.entity ?? undefined });
    return this.call("postHold", { path: { account_id: accountId }, body });
  }

  /** Settles a hold with the units actually used (0 for none); the rest is released (service). */
  settleHold(accountId: string, holdId: string, settlement: { quantity: number }): Promise<Settlement> {
    return this.call("settleHold", { path: { account_id: accountId, hold_id: holdId }, body: { quantity: settlement.quantity } });
  }

  // ---- purchases and the card -------------------------------------------------------------------------

  /** Starts buying credits through Stripe Checkout (billing roles): one of `amount` (minor units), `package` or `blocks`, or none. */
  async purchase(accountId: string, request: { amount?: number; package?: string; blocks?: number; idempotencyKey?: string } = {}): Promise<Purchase> {
    return this.call("postPurchase", { path: { account_id: accountId },
      body: clean({ amount: request.amount, package: request.package, blocks: request.blocks }),
      headers: { "idempotency-key": request.idempotencyKey ?? await newIdempotencyKey() } });
  }

  /** A purchase and its status (billing roles), with `subtotal`, `tax`, `total` and `receipt_url` once paid. */
  getPurchase(accountId: string, purchaseId: string): Promise<Purchase> {
    return this.call("getPurchase", { path: { account_id: accountId, purchase_id: purchaseId } });
  }

  /** One page of purchases and auto-recharges, newest first, each with its receipt (billing roles). */
  purchases(accountId: string, options: { limit?: number; cursor?: string } = {}): Promise<{ purchases: PurchaseListItem[]; next_cursor: string | null }> {
    return this.call("listPurchases", { path: { account_id: accountId }, query: { limit: options.limit, cursor: options.cursor } });
  }

  /** Every purchase and auto-recharge, newest first, page by page as you iterate (`for await`). */
  iterPurchases(accountId: string, options: { pageSize?: number } = {}): AsyncIterable<PurchaseListItem> {
    return pages((cursor) => this.purchases(accountId, { limit: options.pageSize ?? 100, cursor }), (page) => page.purchases);
  }

  /** A Stripe SetupIntent to save a card for auto-recharge (billing roles). */
  async setupCard(accountId: string, options: { idempotencyKey?: string } = {}): Promise<{ setup_intent_id: string; client_secret: string }> {
    return this.call("setupCard", { path: { account_id: accountId }, body: {},
      headers: { "idempotency-key": options.idempotencyKey ?? await newIdempotencyKey() } });
  }

  /** Removes the saved card; auto-recharge turns off with it (billing roles). */
  removeCard(accountId: string): Promise<{ payment_method: null | Record<string, unknown> }> {
    return this.call("removeCard", { path: { account_id: accountId } });
  }

  // ---- reports -----------------------------------------------------------------------------------------

  /** The revenue report of a calendar month, `YYYY-MM` (service). */
  revenueReport(month: string): Promise<RevenueReport> {
    return this.call("getRevenueReport", { query: { month } });
  }

  // ---- webhook endpoints (service) -------------------------------------------------------------------

  /** Registers an endpoint for the domain events; the answer's `secret` is shown only here and after a rotation. */
  createWebhookEndpoint(endpoint: { url: string; events: string[]; description?: string; contactEmail?: string }): Promise<WebhookEndpointWithSecret> {
    return this.call("createWebhookEndpoint", { body: clean({ url: endpoint.url, events: endpoint.events,
      description: endpoint.description, contact_email: endpoint.contactEmail }) });
  }

  /** Every endpoint, without its secret. */
  webhookEndpoints(): Promise<{ webhook_endpoints: WebhookEndpoint[] }> {
    return this.call("listWebhookEndpoints", {});
  }

  /** One endpoint, without its secret. */
  webhookEndpoint(endpointId: string): Promise<WebhookEndpoint> {
    return this.call("getWebhookEndpoint", { path: { endpoint_id: endpointId } });
  }

  /** Removes an endpoint; nothing more is delivered to it. */
  deleteWebhookEndpoint(endpointId: string): Promise<{ id: string; deleted: true }> {
    return this.call("deleteWebhookEndpoint", { path: { endpoint_id: endpointId } });
  }

  /** A new signing secret (in the answer); the old one keeps signing beside it for 24 hours. */
  rotateWebhookSecret(endpointId: string): Promise<WebhookEndpointWithSecret> {
    return this.call("rotateWebhookSecret", { path: { endpoint_id: endpointId }, body: {} });
  }

  /** Enables an endpoint that was disabled for failing. */
  enableWebhookEndpoint(endpointId: string): Promise<WebhookEndpoint> {
    return this.call("enableWebhookEndpoint", { path: { endpoint_id: endpointId }, body: {} });
  }

  /** One page of an endpoint's deliveries, newest first. */
  webhookDeliveries(endpointId: string, options: { limit?: number; cursor?: string } = {}): Promise<{ deliveries: WebhookDelivery[]; next_cursor: string | null }> {
    return this.call("listWebhookDeliveries", { path: { endpoint_id: endpointId },
      query: { limit: options.limit, cursor: options.cursor } });
  }

  /** Every delivery of the endpoint, newest first, page by page as you iterate (`for await`). */
  iterWebhookDeliveries(endpointId: string, options: { pageSize?: number } = {}): AsyncIterable<WebhookDelivery> {
    return pages((cursor) => this.webhookDeliveries(endpointId, { limit: options.pageSize ?? 100, cursor }),
      (page) => page.deliveries);
  }

  /** Sends one delivery again now, with the same event id (202: queued); `reason` goes in the audit log. */
  redeliverWebhook(endpointId: string, deliveryId: string, options: { reason?: string } = {}): Promise<WebhookDelivery> {
    return this.call("redeliverWebhook", { path: { endpoint_id: endpointId, delivery_id: deliveryId },
      body: clean({ reason: options.reason }) });
  }

  // ---- staff and the service (rules §19) -----------------------------------------------------------

  /** One page of the audit log, newest first (finance, service): one account's chain or every record, by actor and action. */
  audit(options: { accountId?: string; actor?: string; action?: string; limit?: number; cursor?: string } = {}): Promise<{ records: AuditRecord[]; next_cursor: string | null }> {
    return this.call("getAudit", { query: { account_id: options.accountId, actor: options.actor, action: options.action,
      limit: options.limit, cursor: options.cursor } });
  }

  /** Every audit record that matches, newest first, page by page as you iterate (`for await`). */
  iterAudit(options: { accountId?: string; actor?: string; action?: string; pageSize?: number } = {}): AsyncIterable<AuditRecord> {
    return pages((cursor) => this.audit({ ...options, limit: options.pageSize ?? 100, cursor }), (page) => page.records);
  }

  /** Accounts found by one of an id, the first billing contact's email or a Stripe customer (service, staff). */
  searchAccounts(by: { accountId?: string; email?: string; customer?: string } = {}): Promise<{ accounts: Record<string, unknown>[] }> {
    return this.call("searchAccounts", { query: { account_id: by.accountId, email: by.email, customer: by.customer } });
  }

  /** What the account holds that the credits view does not show: holds, disputes, its recharge, lanes, its audit head (service, staff). */
  accountDetails(accountId: string): Promise<Record<string, unknown>> {
    return this.call("getAccountDetails", { path: { account_id: accountId } });
  }

  /** The payments the account was credited for, and what refunds took back. */
  payments(accountId: string): Promise<{ payments: Record<string, unknown>[] }> {
    return this.call("getPayments", { path: { account_id: accountId } });
  }

  /** Refunds `amount` minor units (else what is left) of a payment at Stripe (finance, service); its credits go when `charge.refunded` arrives. */
  async refundPayment(accountId: string, paymentId: string, refund: { reason: string; amount?: number; idempotencyKey?: string }): Promise<Record<string, unknown>> {
    return this.call("refundPayment", { path: { account_id: accountId, payment_id: paymentId },
      body: clean({ reason: refund.reason, amount: refund.amount, idempotency_key: refund.idempotencyKey ?? await newIdempotencyKey() }) });
  }

  /** The differences a day's reconciliation run found (`run`: `YYYY-MM-DD`; else today's, then yesterday's). */
  reconciliation(run?: string): Promise<Record<string, unknown>> {
    return this.call("getReconciliation", { query: { run } });
  }

  /** How many messages wait on each dead-letter and failure queue. */
  deadLetters(): Promise<{ queues: { queue: string; url: string; depth: number | null; error: string | null }[] }> {
    return this.call("getDeadLetters", {});
  }

  // ---- the request -------------------------------------------------------------------------------------

  private async call<T>(operationId: OperationId, call: Call): Promise<T> {
    const op = OPERATIONS[operationId];
    let path: string = op.path;
    for (const [name, value] of Object.entries(call.path ?? {})) {
      if (typeof value !== "string" || value === "") throw new TypeError(`${name} must be a non-empty string`);
      path = path.replace(`{${name}}`, encodeURIComponent(value));
    }
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(call.query ?? {})) if (v !== undefined && v !== null) query.set(k, String(v));
    const qs = query.toString();
    const url = this.baseUrl + path + (qs ? `?${qs}` : "");
    const body = call.body === undefined ? undefined : JSON.stringify(call.body);
    for (let attempt = 1; ; attempt++) {
      const token = typeof this.token === "function" ? await this.token() : this.token;
      const headers: Record<string, string> = {
        authorization: `Bearer ${token}`,
        accept: call.text ? "text/csv, application/json" : "application/json",
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...(call.headers ?? {}),
      };
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), this.timeoutMs);
      let response: Response;
      try {
        response = await this.fetchFn(url, { method: op.method, headers, body, signal: controller.signal });
      } catch (e) {
        clearTimeout(timer);
        if (!op.repeatable || attempt > this.maxRetries) {
          throw new TopupError(0, "connection_error", `${op.method} ${path}: ${e instanceof Error ? e.message : String(e)}`);
        }
        await this.sleep(this.delay(attempt, undefined));
        continue;
      }
      let raw: string;
      try {
        raw = await response.text();
      } catch (e) {
        clearTimeout(timer);
        if (!op.repeatable || attempt > this.maxRetries) {
          throw new TopupError(0, "connection_error", `${op.method} ${path}: ${e instanceof Error ? e.message : String(e)}`);
        }
        await this.sleep(this.delay(attempt, undefined));
        continue;
      }
      clearTimeout(timer);
      if (response.ok) {
        if (call.text) return raw as T;
        try {
          return (raw ? JSON.parse(raw) : null) as T;
        } catch {
          throw new TopupError(response.status, "invalid_response", `${op.method} ${path}: the answer is not JSON`);
        }
      }
      const error = apiError(response.status, raw, response.headers.get("retry-after"));
      const retryable = (op.repeatable ? RETRY_STATUSES : NOT_DONE_STATUSES).has(response.status);
      if (!retryable || attempt > this.maxRetries) throw error;
      await this.sleep(this.delay(attempt, error.retryAfterSec));
    }
  }

  /** Before retry `attempt` (1-based): half the capped exponential step plus a random part of the other half, never less than `Retry-After`. */
  private delay(attempt: number, retryAfterSec: number | undefined): number {
    const step = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
    let ms = step / 2 + Math.random() * (step / 2);
    if (retryAfterSec !== undefined) ms = Math.max(ms, Math.min(retryAfterSec * 1000, this.maxRetryAfterMs));
    return ms;
  }
}

function apiError(status: number, raw: string, retryAfter: string | null): TopupError {
  let body: ErrorBody = {};
  try {
    const parsed = raw ? JSON.parse(raw) : {};
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) body = parsed;
  } catch {
    body = {};
  }
  const code = typeof body.error?.code === "string" ? body.error.code : `http_${status}`;
  const message = typeof body.error?.message === "string" ? body.error.message : raw.slice(0, 200);
  return new TopupError(status, code, message, body, parseRetryAfter(retryAfter));
}

/** `Retry-After` in seconds: a number of seconds or an HTTP date. */
export function parseRetryAfter(value: string | null): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v);
  const when = Date.parse(v);
  return Number.isNaN(when) ? undefined : Math.max(0, (when - Date.now()) / 1000);
}

/** The object without its undefined fields. */
function clean(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}

function pages<P extends { next_cursor: string | null }, I>(fetchPage: (cursor?: string) => Promise<P>,
                                                            items: (page: P) => I[]): AsyncIterable<I> {
  return {
    async *[Symbol.asyncIterator]() {
      let cursor: string | undefined;
      for (;;) {
        const page = await fetchPage(cursor);
        yield* items(page) ?? [];
        if (!page.next_cursor) return;
        cursor = page.next_cursor;
      }
    },
  };
}
