/**
 * @topup/client: the TypeScript client of the topup prepaid-credits API.
 *
 * ```ts
 * import { Topup, TopupError, verifyWebhook } from "@topup/client";
 * const topup = new Topup({ baseUrl: "https://billing.example.com", token });
 * await topup.debit("acme", { consumable: "api_calls", quantity: 1500 });
 * ```
 *
 * The `<topup-credits>` card is the `@topup/client/card` entry.
 */
export { Topup, VERSION, RETRY_STATUSES, newIdempotencyKey, parseRetryAfter } from "./client.js";
export type { TopupOptions, TokenSource } from "./client.js";
export { DebitBatcher, MAX_BATCH } from "./batcher.js";
export type { BatcherOptions } from "./batcher.js";
export { TopupError, SignatureError } from "./errors.js";
export type { ErrorBody } from "./errors.js";
export { OPERATIONS, NOT_FOR_CLIENTS } from "./operations.js";
export type { Operation, OperationId } from "./operations.js";
export { verifyWebhook, signWebhook, SIGNATURE_HEADER } from "./webhooks.js";
export type * from "./types.js";
