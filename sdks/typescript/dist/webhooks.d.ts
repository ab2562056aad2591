import type { WebhookEvent } from "./types.js";
/**
 * Verifying what topup sends to a webhook endpoint: `POST <url>` with a JSON body and the header
 * `Topup-Signature: t=<unix seconds>,v1=<hex>`, where `v1` is HMAC-SHA256, keyed with the
 * endpoint's secret, of `<t>.<the raw body>` (shared/src/webhooks/mod.rs). For 24 hours after a
 * rotation the header carries one more `v1`, made with the previous secret.
 */
export declare const SIGNATURE_HEADER = "Topup-Signature";
/** The `Topup-Signature` value topup would send with `payload` at `timestampSec` (default now): for a receiver's tests. */
export declare function signWebhook(payload: string | Uint8Array | ArrayBuffer, secret: string, timestampSec?: number): Promise<string>;
/**
 * Checks a delivery and answers its event, or rejects with a {@link SignatureError}.
 *
 * `payload` is the raw body as received (before any parsing), `header` the `Topup-Signature`
 * value, `secret` the endpoint's signing secret. A timestamp more than `toleranceSec` (300) from
 * now is refused, so a captured delivery cannot be replayed later; any `v1` that matches is
 * enough (one per secret during a rotation).
 */
export declare function verifyWebhook(payload: string | Uint8Array | ArrayBuffer, header: string, secret: string, toleranceSec?: number, nowSec?: number): Promise<WebhookEvent>;
