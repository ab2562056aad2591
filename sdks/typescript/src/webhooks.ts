import { SignatureError } from "./errors.js";
import type { WebhookEvent } from "./types.js";

/**
 * Verifying what topup sends to a webhook endpoint: `POST <url>` with a JSON body and the header
 * `Topup-Signature: t=<unix seconds>,v1=<hex>`, where `v1` is HMAC-SHA256, keyed with the
 * endpoint's secret, of `<t>.<the raw body>` (shared/src/webhooks/mod.rs). For 24 hours after a
 * rotation the header carries one more `v1`, made with the previous secret.
 */
export const SIGNATURE_HEADER = "Topup-Signature";

const encoder = new TextEncoder();

async function subtle(): Promise<SubtleCrypto> {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c?.subtle) return c.subtle;
  // Node 18 has no global `crypto`; its module has Web Crypto.
  const name = "node:crypto";
  const mod = await import(/* webpackIgnore: true */ /* @vite-ignore */ name);
  return mod.webcrypto.subtle as SubtleCrypto;
}

function bytes(payload: string | Uint8Array | ArrayBuffer): Uint8Array {
  if (typeof payload === "string") return encoder.encode(payload);
  return payload instanceof Uint8Array ? payload : new Uint8Array(payload);
}

async function signature(secret: string, t: number, body: Uint8Array): Promise<string> {
  const s = await subtle();
  const key = await s.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const prefix = encoder.encode(`${t}.`);
  const message = new Uint8Array(prefix.length + body.length);
  message.set(prefix);
  message.set(body, prefix.length);
  const mac = new Uint8Array(await s.sign("HMAC", key, message));
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Equal strings, compared in time that does not depend on where they differ. */
function same(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/** The `Topup-Signature` value topup would send with `payload` at `timestampSec` (default now): for a receiver's tests. */
export async function signWebhook(payload: string | Uint8Array | ArrayBuffer, secret: string,
                                  timestampSec: number = Math.floor(Date.now() / 1000)): Promise<string> {
  return `t=${timestampSec},v1=${await signature(secret, timestampSec, bytes(payload))}`;
}

/**
 * Checks a delivery and answers its event, or rejects with a {@link SignatureError}.
 *
 * `payload` is the raw body as received (before any parsing), `header` the `Topup-Signature`
 * value, `secret` the endpoint's signing secret. A timestamp more than `toleranceSec` (300) from
 * now is refused, so a captured delivery cannot be replayed later; any `v1` that matches is
 * enough (one per secret during a rotation).
 */
export async function verifyWebhook(payload: string | Uint8Array | ArrayBuffer, header: string, secret: string,
                                    toleranceSec = 300, nowSec: number = Date.now() / 1000): Promise<WebhookEvent> {
  const body = bytes(payload);
  let t: number | undefined;
  const signatures: string[] = [];
  for (const part of (header ?? "").split(",")) {
    const at = part.indexOf("=");
    if (at < 0) continue;
    const key = part.slice(0, at).trim();
    const value = part.slice(at + 1).trim();
    if (key === "t") t = /^-?\d+$/.test(value) ? Number(value) : undefined;
    else if (key === "v1") signatures.push(value);
  }
  if (t === undefined || signatures.length === 0) {
    throw new SignatureError("malformed_header", "The header has no t=<unix seconds> or no v1= signature.");
  }
  if (Math.abs(nowSec - t) > toleranceSec) {
    throw new SignatureError("timestamp_out_of_tolerance",
      `The signature's time is ${Math.round(Math.abs(nowSec - t))} s from now (tolerance ${toleranceSec} s).`);
  }
  const expected = await signature(secret, t, body);
  if (!signatures.some((s) => same(s, expected))) {
    throw new SignatureError("no_matching_signature", "No signature in the header matches this payload and secret.");
  }
  let event: unknown;
  try {
    event = JSON.parse(new TextDecoder().decode(body));
  } catch {
    throw new SignatureError("malformed_payload", "The payload is not JSON.");
  }
  if (!event || typeof event !== "object" || Array.isArray(event)) {
    throw new SignatureError("malformed_payload", "The payload is not a JSON object.");
  }
  return event as WebhookEvent;
}
