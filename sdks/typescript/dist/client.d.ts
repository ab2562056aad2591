import type { Account, Alerts, BatchResult, BillingContact, CheckAnswer, CreditsView, Debit, DebitRequest, Entity, Grant, Hold, LedgerEntry, Lanes, Notification, Purchase, RevenueReport, Settlement, TransactionsPage, WebhookDelivery, WebhookEndpoint, WebhookEndpointWithSecret } from "./types.js";
export declare const VERSION = "0.1.0";
/** Statuses after which a request is sent again (throttled, busy, AWS or Stripe briefly unavailable). */
export declare const RETRY_STATUSES: ReadonlySet<number>;
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
export declare function newIdempotencyKey(): Promise<string>;
/**
 * A client of one topup deployment: one method per operation of the API (infra/openapi.yaml).
 *
 * Every method answers the JSON body of its success (the CSV export as text) or throws a
 * {@link TopupError}. Calls that debit, grant, reserve or buy carry an idempotency key: one is made
 * when you give none and sent on every retry, so a retry never charges twice. 429, 502, 503, 504
 * and network errors are retried with exponential backoff and jitter, never sooner than
 * `Retry-After`.
 */
export declare class Topup {
    readonly baseUrl: string;
    private readonly token;
    private readonly maxRetries;
    private readonly backoffMs;
    private readonly maxBackoffMs;
    private readonly maxRetryAfterMs;
    private readonly timeoutMs;
    private readonly fetchFn;
    /** How the client waits between attempts (replaceable in tests). */
    sleep: (ms: number) => Promise<void>;
    constructor(options: TopupOptions);
    /** Creates or updates an account (service): its plan and up to ten billing contacts. */
    putAccount(accountId: string, account: {
        plan: string;
        billingContacts: BillingContact[];
    }): Promise<Account>;
    /** The credits view: balance, low-balance flag, lifetime totals, recent transactions, allowances, auto-recharge, card, unit, alerts (view roles). */
    credits(accountId: string): Promise<CreditsView>;
    /** One page of the ledger, newest first (view roles); pass `next_cursor` back as `cursor`, or use {@link iterTransactions}. */
    transactions(accountId: string, options?: {
        limit?: number;
        cursor?: string;
        entity?: string;
    }): Promise<TransactionsPage>;
    /** Every ledger entry, newest first, fetching pages of `pageSize` as you iterate (`for await`). */
    iterTransactions(accountId: string, options?: {
        pageSize?: number;
        entity?: string;
    }): AsyncIterable<LedgerEntry>;
    /** The whole ledger as CSV text, newest first (view roles). */
    transactionsCsv(accountId: string): Promise<string>;
    /** Active grants in burn order, then the ended ones (view roles). */
    grants(accountId: string): Promise<{
        grants: Grant[];
    }>;
    /** Removes what remains of a grant (service); voiding an ended grant answers it as it is. */
    voidGrant(accountId: string, grantId: string): Promise<Grant>;
    /**
     * Grants (`amount` > 0) or takes back (< 0) micro-credits (service). A grant may carry
     * `expiresAt` (RFC 3339), `priority` (0–100), `category` and, when paid, `charge`.
     */
    adjust(accountId: string, adjustment: {
        amount: number;
        reason: string;
        idempotencyKey?: string;
        expiresAt?: string;
        priority?: number;
        category?: "promotional" | "paid";
        charge?: {
            amount: number;
            currency: string;
        };
    }): Promise<LedgerEntry>;
    /** Auto-recharge settings (billing roles): below `threshold`, buy `amount`, at most `monthlyMax` times a month. */
    setAutoRecharge(accountId: string, settings: {
        enabled: boolean;
        threshold?: number;
        amount?: number;
        monthlyMax?: number;
        monthlySpendMax?: number;
    }): Promise<CreditsView["auto_recharge"]>;
    /**
     * Would this debit be allowed now? Writes and reserves nothing (view roles). Call it as
     * `check(accountId, { consumable, quantity, entity? })` or `check(accountId, consumable, quantity, entity?)`.
     */
    check(accountId: string, request: {
        consumable: string;
        quantity: number;
        entity?: string;
    }): Promise<CheckAnswer>;
    check(accountId: string, consumable: string, quantity: number, entity?: string): Promise<CheckAnswer>;
    /** Replaces the account's balance alerts: up to five thresholds in micro-credits; `[]` removes them (billing roles). */
    setAlerts(accountId: string, thresholds: number[]): Promise<Alerts>;
    /** Spreads a hot account's debits over `lanes` lanes, 1 to 16 (service). */
    setLanes(accountId: string, lanes: number): Promise<Lanes>;
    /** Every member, project or key with its monthly limit and this month's spend (view roles). */
    entities(accountId: string): Promise<{
        entities: Entity[];
    }>;
    /** One entity's monthly limit and spend this month (view roles). */
    entity(accountId: string, entity: string): Promise<Entity>;
    /** Sets an entity's `monthlyLimit` (null for none) and `name`; what you leave out stays. */
    setEntity(accountId: string, entity: string, settings: {
        monthlyLimit?: number | null;
        name?: string | null;
    }): Promise<Entity>;
    /** The emails and SMS sent about the account, newest first (view roles). */
    notifications(accountId: string, options?: {
        limit?: number;
    }): Promise<{
        notifications: Notification[];
    }>;
    /**
     * Debits usage: the month's allowance first, then credits (service). The same key again answers
     * the same. Out of credits (or past the entity's monthly limit) throws a {@link TopupError} with
     * status 402 and the consumable's code.
     */
    debit(accountId: string, request: DebitRequest): Promise<Debit>;
    /**
     * Debits up to 500 events at once, each on its own (service); an event without a key gets one.
     * Each result's `status` is what a single debit would have answered. See `DebitBatcher`
     * for batching single debits.
     */
    debitBatch(accountId: string, events: DebitRequest[]): Promise<{
        results: BatchResult[];
    }>;
    /** Reserves credits for a metered session (service); settle it with {@link settleHold}. */
    hold(accountId: string, request: DebitRequest & {
        ttlSeconds?: number;
    }): Promise<Hold>;
    /** Settles a hold with the units actually used (0 for none); the rest is released (service). */
    settleHold(accountId: string, holdId: string, settlement: {
        quantity: number;
    }): Promise<Settlement>;
    /** Starts buying credits through Stripe Checkout (billing roles): one of `amount` (minor units), `package` or `blocks`, or none. */
    purchase(accountId: string, request?: {
        amount?: number;
        package?: string;
        blocks?: number;
        idempotencyKey?: string;
    }): Promise<Purchase>;
    /** A purchase and its status (billing roles). */
    getPurchase(accountId: string, purchaseId: string): Promise<Purchase>;
    /** A Stripe SetupIntent to save a card for auto-recharge (billing roles). */
    setupCard(accountId: string, options?: {
        idempotencyKey?: string;
    }): Promise<{
        setup_intent_id: string;
        client_secret: string;
    }>;
    /** Removes the saved card; auto-recharge turns off with it (billing roles). */
    removeCard(accountId: string): Promise<{
        payment_method: null | Record<string, unknown>;
    }>;
    /** The revenue report of a calendar month, `YYYY-MM` (service). */
    revenueReport(month: string): Promise<RevenueReport>;
    /** Registers an endpoint for the domain events; the answer's `secret` is shown only here and after a rotation. */
    createWebhookEndpoint(endpoint: {
        url: string;
        events: string[];
        description?: string;
        contactEmail?: string;
    }): Promise<WebhookEndpointWithSecret>;
    /** Every endpoint, without its secret. */
    webhookEndpoints(): Promise<{
        webhook_endpoints: WebhookEndpoint[];
    }>;
    /** One endpoint, without its secret. */
    webhookEndpoint(endpointId: string): Promise<WebhookEndpoint>;
    /** Removes an endpoint; nothing more is delivered to it. */
    deleteWebhookEndpoint(endpointId: string): Promise<{
        id: string;
        deleted: true;
    }>;
    /** A new signing secret (in the answer); the old one keeps signing beside it for 24 hours. */
    rotateWebhookSecret(endpointId: string): Promise<WebhookEndpointWithSecret>;
    /** Enables an endpoint that was disabled for failing. */
    enableWebhookEndpoint(endpointId: string): Promise<WebhookEndpoint>;
    /** One page of an endpoint's deliveries, newest first. */
    webhookDeliveries(endpointId: string, options?: {
        limit?: number;
        cursor?: string;
    }): Promise<{
        deliveries: WebhookDelivery[];
        next_cursor: string | null;
    }>;
    /** Every delivery of the endpoint, newest first, page by page as you iterate (`for await`). */
    iterWebhookDeliveries(endpointId: string, options?: {
        pageSize?: number;
    }): AsyncIterable<WebhookDelivery>;
    /** Sends one delivery again now, with the same event id (202: queued). */
    redeliverWebhook(endpointId: string, deliveryId: string): Promise<WebhookDelivery>;
    private call;
    /** Before retry `attempt` (1-based): half the capped exponential step plus a random part of the other half, never less than `Retry-After`. */
    private delay;
}
/** `Retry-After` in seconds: a number of seconds or an HTTP date. */
export declare function parseRetryAfter(value: string | null): number | undefined;
