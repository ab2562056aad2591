import { TopupError } from "./errors.js";
import { OPERATIONS } from "./operations.js";
export const VERSION = "0.1.0";
/** Statuses after which a request is sent again (throttled, busy, AWS or Stripe briefly unavailable). */
export const RETRY_STATUSES = new Set([429, 502, 503, 504]);
/** Of those, the ones that say nothing was done, so that even a request without a key may be sent again. */
const NOT_DONE_STATUSES = new Set([429, 503]);
/** A fresh idempotency key (a random UUID). */
export async function newIdempotencyKey() {
    const c = globalThis.crypto;
    if (c && typeof c.randomUUID === "function")
        return c.randomUUID();
    // Node 18 has no global `crypto`; its module has the same function.
    const name = "node:crypto";
    const mod = await import(/* webpackIgnore: true */ /* @vite-ignore */ name);
    return mod.randomUUID();
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
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
    constructor(options) {
        /** How the client waits between attempts (replaceable in tests). */
        this.sleep = sleep;
        if (!options || !options.baseUrl)
            throw new TypeError("baseUrl is required");
        this.baseUrl = options.baseUrl.replace(/\/+$/, "");
        this.token = options.token;
        this.maxRetries = Math.max(0, options.maxRetries ?? 4);
        this.backoffMs = options.backoffMs ?? 200;
        this.maxBackoffMs = options.maxBackoffMs ?? 8000;
        this.maxRetryAfterMs = options.maxRetryAfterMs ?? 60000;
        this.timeoutMs = options.timeoutMs ?? 30000;
        this.fetchFn = options.fetch ?? ((input, init) => fetch(input, init));
    }
    // ---- accounts --------------------------------------------------------------------------------
    /** Creates or updates an account (service): its plan and up to ten billing contacts. */
    putAccount(accountId, account) {
        return this.call("putAccount", { path: { account_id: accountId },
            body: { plan: account.plan, billing_contacts: account.billingContacts } });
    }
    /** The credits view: balance, low-balance flag, lifetime totals, recent transactions, allowances, auto-recharge, card, unit, alerts (view roles). */
    credits(accountId) {
        return this.call("getCredits", { path: { account_id: accountId } });
    }
    /** One page of the ledger, newest first (view roles); pass `next_cursor` back as `cursor`, or use {@link iterTransactions}. */
    transactions(accountId, options = {}) {
        return this.call("getTransactions", { path: { account_id: accountId },
            query: { limit: options.limit, cursor: options.cursor, entity: options.entity } });
    }
    /** Every ledger entry, newest first, fetching pages of `pageSize` as you iterate (`for await`). */
    iterTransactions(accountId, options = {}) {
        return pages((cursor) => this.transactions(accountId, { limit: options.pageSize ?? 100, cursor, entity: options.entity }), (page) => page.transactions);
    }
    /** The whole ledger as CSV text, newest first (view roles). */
    transactionsCsv(accountId) {
        return this.call("getTransactionsCsv", { path: { account_id: accountId }, text: true });
    }
    /** Active grants in burn order, then the ended ones (view roles). */
    grants(accountId) {
        return this.call("getGrants", { path: { account_id: accountId } });
    }
    /** Removes what remains of a grant (service); voiding an ended grant answers it as it is. */
    voidGrant(accountId, grantId) {
        return this.call("voidGrant", { path: { account_id: accountId, grant_id: grantId }, body: {} });
    }
    /**
     * Grants (`amount` > 0) or takes back (< 0) micro-credits (service). A grant may carry
     * `expiresAt` (RFC 3339), `priority` (0–100), `category` and, when paid, `charge`.
     */
    async adjust(accountId, adjustment) {
        const body = clean({
            amount: adjustment.amount, reason: adjustment.reason,
            idempotency_key: adjustment.idempotencyKey ?? await newIdempotencyKey(),
            expires_at: adjustment.expiresAt, priority: adjustment.priority, category: adjustment.category, charge: adjustment.charge,
        });
        return this.call("postAdjustment", { path: { account_id: accountId }, body });
    }
    /** Auto-recharge settings (billing roles): below `threshold`, buy `amount`, at most `monthlyMax` times a month. */
    setAutoRecharge(accountId, settings) {
        return this.call("putAutoRecharge", { path: { account_id: accountId }, body: clean({
                enabled: settings.enabled, threshold: settings.threshold, amount: settings.amount,
                monthly_max: settings.monthlyMax, monthly_spend_max: settings.monthlySpendMax,
            }) });
    }
    check(accountId, a, quantity, entity) {
        const r = typeof a === "string" ? { consumable: a, quantity: quantity, entity } : a;
        return this.call("checkCredits", { path: { account_id: accountId },
            query: { consumable: r.consumable, quantity: r.quantity, entity: r.entity } });
    }
    /** Replaces the account's balance alerts: up to five thresholds in micro-credits; `[]` removes them (billing roles). */
    setAlerts(accountId, thresholds) {
        return this.call("putAlerts", { path: { account_id: accountId }, body: { thresholds } });
    }
    /** Spreads a hot account's debits over `lanes` lanes, 1 to 16 (service). */
    setLanes(accountId, lanes) {
        return this.call("putLanes", { path: { account_id: accountId }, body: { lanes } });
    }
    // ---- entities ----------------------------------------------------------------------------------
    /** Every member, project or key with its monthly limit and this month's spend (view roles). */
    entities(accountId) {
        return this.call("listEntities", { path: { account_id: accountId } });
    }
    /** One entity's monthly limit and spend this month (view roles). */
    entity(accountId, entity) {
        return this.call("getEntity", { path: { account_id: accountId, entity } });
    }
    /** Sets an entity's `monthlyLimit` (null for none) and `name`; what you leave out stays. */
    setEntity(accountId, entity, settings) {
        const body = {};
        if (settings.monthlyLimit !== undefined)
            body.monthly_limit = settings.monthlyLimit;
        if (settings.name !== undefined)
            body.name = settings.name;
        return this.call("putEntity", { path: { account_id: accountId, entity }, body });
    }
    /** The emails and SMS sent about the account, newest first (view roles). */
    notifications(accountId, options = {}) {
        return this.call("getNotifications", { path: { account_id: accountId }, query: { limit: options.limit } });
    }
    // ---- usage ---------------------------------------------------------------------------------------
    /**
     * Debits usage: the month's allowance first, then credits (service). The same key again answers
     * the same. Out of credits (or past the entity's monthly limit) throws a {@link TopupError} with
     * status 402 and the consumable's code.
     */
    async debit(accountId, request) {
        const body = clean({ consumable: request.consumable, quantity: request.quantity,
            idempotency_key: request.idempotencyKey ?? await newIdempotencyKey(), entity: request.entity ?? undefined });
        return this.call("postUsage", { path: { account_id: accountId }, body });
    }
    /**
     * Debits up to 500 events at once, each on its own (service); an event without a key gets one.
     * Each result's `status` is what a single debit would have answered. See `DebitBatcher`
     * for batching single debits.
     */
    async debitBatch(accountId, events) {
        const out = [];
        for (const e of events) {
            out.push(clean({ consumable: e.consumable, quantity: e.quantity,
                idempotency_key: e.idempotencyKey ?? await newIdempotencyKey(), entity: e.entity ?? undefined }));
        }
        return this.call("postUsageBatch", { path: { account_id: accountId }, body: { events: out } });
    }
    /** Reserves credits for a metered session (service); settle it with {@link settleHold}. */
    async hold(accountId, request) {
        const body = clean({ consumable: request.consumable, quantity: request.quantity,
            idempotency_key: request.idempotencyKey ?? await newIdempotencyKey(), ttl_seconds: request.ttlSeconds,
            entity: request.entity ?? undefined });
        return this.call("postHold", { path: { account_id: accountId }, body });
    }
    /** Settles a hold with the units actually used (0 for none); the rest is released (service). */
    settleHold(accountId, holdId, settlement) {
        return this.call("settleHold", { path: { account_id: accountId, hold_id: holdId }, body: { quantity: settlement.quantity } });
    }
    // ---- purchases and the card -------------------------------------------------------------------------
    /** Starts buying credits through Stripe Checkout (billing roles): one of `amount` (minor units), `package` or `blocks`, or none. */
    async purchase(accountId, request = {}) {
        return this.call("postPurchase", { path: { account_id: accountId },
            body: clean({ amount: request.amount, package: request.package, blocks: request.blocks }),
            headers: { "idempotency-key": request.idempotencyKey ?? await newIdempotencyKey() } });
    }
    /** A purchase and its status (billing roles). */
    getPurchase(accountId, purchaseId) {
        return this.call("getPurchase", { path: { account_id: accountId, purchase_id: purchaseId } });
    }
    /** A Stripe SetupIntent to save a card for auto-recharge (billing roles). */
    async setupCard(accountId, options = {}) {
        return this.call("setupCard", { path: { account_id: accountId }, body: {},
            headers: { "idempotency-key": options.idempotencyKey ?? await newIdempotencyKey() } });
    }
    /** Removes the saved card; auto-recharge turns off with it (billing roles). */
    removeCard(accountId) {
        return this.call("removeCard", { path: { account_id: accountId } });
    }
    // ---- reports -----------------------------------------------------------------------------------------
    /** The revenue report of a calendar month, `YYYY-MM` (service). */
    revenueReport(month) {
        return this.call("getRevenueReport", { query: { month } });
    }
    // ---- webhook endpoints (service) -------------------------------------------------------------------
    /** Registers an endpoint for the domain events; the answer's `secret` is shown only here and after a rotation. */
    createWebhookEndpoint(endpoint) {
        return this.call("createWebhookEndpoint", { body: clean({ url: endpoint.url, events: endpoint.events,
                description: endpoint.description, contact_email: endpoint.contactEmail }) });
    }
    /** Every endpoint, without its secret. */
    webhookEndpoints() {
        return this.call("listWebhookEndpoints", {});
    }
    /** One endpoint, without its secret. */
    webhookEndpoint(endpointId) {
        return this.call("getWebhookEndpoint", { path: { endpoint_id: endpointId } });
    }
    /** Removes an endpoint; nothing more is delivered to it. */
    deleteWebhookEndpoint(endpointId) {
        return this.call("deleteWebhookEndpoint", { path: { endpoint_id: endpointId } });
    }
    /** A new signing secret (in the answer); the old one keeps signing beside it for 24 hours. */
    rotateWebhookSecret(endpointId) {
        return this.call("rotateWebhookSecret", { path: { endpoint_id: endpointId }, body: {} });
    }
    /** Enables an endpoint that was disabled for failing. */
    enableWebhookEndpoint(endpointId) {
        return this.call("enableWebhookEndpoint", { path: { endpoint_id: endpointId }, body: {} });
    }
    /** One page of an endpoint's deliveries, newest first. */
    webhookDeliveries(endpointId, options = {}) {
        return this.call("listWebhookDeliveries", { path: { endpoint_id: endpointId },
            query: { limit: options.limit, cursor: options.cursor } });
    }
    /** Every delivery of the endpoint, newest first, page by page as you iterate (`for await`). */
    iterWebhookDeliveries(endpointId, options = {}) {
        return pages((cursor) => this.webhookDeliveries(endpointId, { limit: options.pageSize ?? 100, cursor }), (page) => page.deliveries);
    }
    /** Sends one delivery again now, with the same event id (202: queued). */
    redeliverWebhook(endpointId, deliveryId) {
        return this.call("redeliverWebhook", { path: { endpoint_id: endpointId, delivery_id: deliveryId }, body: {} });
    }
    // ---- the request -------------------------------------------------------------------------------------
    async call(operationId, call) {
        const op = OPERATIONS[operationId];
        let path = op.path;
        for (const [name, value] of Object.entries(call.path ?? {})) {
            if (typeof value !== "string" || value === "")
                throw new TypeError(`${name} must be a non-empty string`);
            path = path.replace(`{${name}}`, encodeURIComponent(value));
        }
        const query = new URLSearchParams();
        for (const [k, v] of Object.entries(call.query ?? {}))
            if (v !== undefined && v !== null)
                query.set(k, String(v));
        const qs = query.toString();
        const url = this.baseUrl + path + (qs ? `?${qs}` : "");
        const body = call.body === undefined ? undefined : JSON.stringify(call.body);
        for (let attempt = 1;; attempt++) {
            const token = typeof this.token === "function" ? await this.token() : this.token;
            const headers = {
                authorization: `Bearer ${token}`,
                accept: call.text ? "text/csv, application/json" : "application/json",
                ...(body !== undefined ? { "content-type": "application/json" } : {}),
                ...(call.headers ?? {}),
            };
            const controller = new AbortController();
            const timer = setTimeout(() => controller.abort(), this.timeoutMs);
            let response;
            try {
                response = await this.fetchFn(url, { method: op.method, headers, body, signal: controller.signal });
            }
            catch (e) {
                clearTimeout(timer);
                if (!op.repeatable || attempt > this.maxRetries) {
                    throw new TopupError(0, "connection_error", `${op.method} ${path}: ${e instanceof Error ? e.message : String(e)}`);
                }
                await this.sleep(this.delay(attempt, undefined));
                continue;
            }
            let raw;
            try {
                raw = await response.text();
            }
            catch (e) {
                clearTimeout(timer);
                if (!op.repeatable || attempt > this.maxRetries) {
                    throw new TopupError(0, "connection_error", `${op.method} ${path}: ${e instanceof Error ? e.message : String(e)}`);
                }
                await this.sleep(this.delay(attempt, undefined));
                continue;
            }
            clearTimeout(timer);
            if (response.ok) {
                if (call.text)
                    return raw;
                return (raw ? JSON.parse(raw) : null);
            }
            const error = apiError(response.status, raw, response.headers.get("retry-after"));
            const retryable = (op.repeatable ? RETRY_STATUSES : NOT_DONE_STATUSES).has(response.status);
            if (!retryable || attempt > this.maxRetries)
                throw error;
            await this.sleep(this.delay(attempt, error.retryAfterSec));
        }
    }
    /** Before retry `attempt` (1-based): half the capped exponential step plus a random part of the other half, never less than `Retry-After`. */
    delay(attempt, retryAfterSec) {
        const step = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
        let ms = step / 2 + Math.random() * (step / 2);
        if (retryAfterSec !== undefined)
            ms = Math.max(ms, Math.min(retryAfterSec * 1000, this.maxRetryAfterMs));
        return ms;
    }
}
function apiError(status, raw, retryAfter) {
    let body = {};
    try {
        const parsed = raw ? JSON.parse(raw) : {};
        if (parsed && typeof parsed === "object" && !Array.isArray(parsed))
            body = parsed;
    }
    catch {
        body = {};
    }
    const code = typeof body.error?.code === "string" ? body.error.code : `http_${status}`;
    const message = typeof body.error?.message === "string" ? body.error.message : raw.slice(0, 200);
    return new TopupError(status, code, message, body, parseRetryAfter(retryAfter));
}
/** `Retry-After` in seconds: a number of seconds or an HTTP date. */
export function parseRetryAfter(value) {
    if (!value)
        return undefined;
    const v = value.trim();
    if (/^\d+(\.\d+)?$/.test(v))
        return Number(v);
    const when = Date.parse(v);
    return Number.isNaN(when) ? undefined : Math.max(0, (when - Date.now()) / 1000);
}
/** The object without its undefined fields. */
function clean(o) {
    return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}
function pages(fetchPage, items) {
    return {
        async *[Symbol.asyncIterator]() {
            let cursor;
            for (;;) {
                const page = await fetchPage(cursor);
                yield* items(page) ?? [];
                if (!page.next_cursor)
                    return;
                cursor = page.next_cursor;
            }
        },
    };
}
