// verifyWebhook against signatures made as topup makes them (shared/src/webhooks/mod.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { verifyWebhook, signWebhook, SignatureError, TopupError } from "@topup/client";
import { ROOT } from "./helpers.mjs";

const T = 1_700_000_000;
const EVENT = { id: "evt_1", type: "balance.low", created: T, account_id: "acme", data: { balance: 4 } };
const BODY = JSON.stringify(EVENT);
const header = (secret, t = T, body = BODY) => `t=${t},v1=${createHmac("sha256", secret).update(`${t}.${body}`).digest("hex")}`;
const refused = (code) => (e) => e instanceof SignatureError && e instanceof TopupError && e.code === code;

test("the Rust code's own test vector verifies", async () => {
  // shared/src/webhooks/mod.rs pins HMAC-SHA256("whsec_test", "1700000000.{}") in its unit test;
  // read it from there, so that a change of the scheme on either side fails here.
  const rust = readFileSync(join(ROOT, "shared/src/webhooks/mod.rs"), "utf8");
  const m = rust.match(/signature\("whsec_test", 1_700_000_000, "\{\}"\);\s*assert_eq!\(sig, "([0-9a-f]{64})"\)/);
  assert.ok(m, "the Rust test vector moved");
  assert.equal(await signWebhook("{}", "whsec_test", T), `t=${T},v1=${m[1]}`);
  assert.deepEqual(await verifyWebhook("{}", `t=${T},v1=${m[1]}`, "whsec_test", 300, T + 100), {});
});

test("a delivery verifies and answers its event, as a string, bytes or a buffer", async () => {
  assert.deepEqual(await verifyWebhook(BODY, header("whsec_a"), "whsec_a", 300, T + 299), EVENT);
  assert.deepEqual(await verifyWebhook(new TextEncoder().encode(BODY), header("whsec_a"), "whsec_a", 300, T - 299), EVENT);
  assert.deepEqual(await verifyWebhook(Buffer.from(BODY), header("whsec_a"), "whsec_a", 300, T), EVENT);
});

test("another secret, a changed body or another time's signature is refused", async () => {
  await assert.rejects(verifyWebhook(BODY, header("whsec_a"), "whsec_b", 300, T), refused("no_matching_signature"));
  await assert.rejects(verifyWebhook(BODY + " ", header("whsec_a"), "whsec_a", 300, T), refused("no_matching_signature"));
  const other = header("whsec_a", T + 1).split("v1=")[1];
  await assert.rejects(verifyWebhook(BODY, `t=${T},v1=${other}`, "whsec_a", 300, T), refused("no_matching_signature"));
});

test("a timestamp outside the tolerance is refused", async () => {
  for (const [now, tol] of [[T + 301, 300], [T - 301, 300], [T + 11, 10]]) {
    await assert.rejects(verifyWebhook(BODY, header("whsec_a"), "whsec_a", tol, now), refused("timestamp_out_of_tolerance"));
  }
  assert.deepEqual(await verifyWebhook(BODY, header("whsec_a"), "whsec_a", 10, T + 10), EVENT);
});

test("during a rotation either secret verifies", async () => {
  const both = `${header("whsec_new")},v1=${header("whsec_old").split("v1=")[1]}`;
  assert.deepEqual(await verifyWebhook(BODY, both, "whsec_old", 300, T), EVENT);
  assert.deepEqual(await verifyWebhook(BODY, both, "whsec_new", 300, T), EVENT);
  await assert.rejects(verifyWebhook(BODY, both, "whsec_other", 300, T), refused("no_matching_signature"));
});

test("a malformed header or payload is refused", async () => {
  for (const h of ["", "garbage", `t=${T}`, "v1=abc", `t=x,v1=${"0".repeat(64)}`]) {
    await assert.rejects(verifyWebhook(BODY, h, "whsec_a", 300, T), refused("malformed_header"), h);
  }
  await assert.rejects(verifyWebhook("[1]", header("whsec_a", T, "[1]"), "whsec_a", 300, T), refused("malformed_payload"));
});

test("without a clock given, now is used", async () => {
  const body = '{"id":"evt_2"}';
  assert.deepEqual(await verifyWebhook(body, await signWebhook(body, "s"), "s"), { id: "evt_2" });
  await assert.rejects(verifyWebhook(body, await signWebhook(body, "s", T), "s"), refused("timestamp_out_of_tolerance"));
});

test("without a global crypto (as in Node 18) keys and signatures still work", async () => {
  const { execFileSync } = await import("node:child_process");
  const script = `
    delete globalThis.crypto;
    if (typeof globalThis.crypto !== "undefined") throw new Error("crypto is global");
    const { newIdempotencyKey, signWebhook, verifyWebhook } = await import("@topup/client");
    const key = await newIdempotencyKey();
    const h = await signWebhook("{}", "whsec_test", ${T});
    const e = await verifyWebhook("{}", h, "whsec_test", 300, ${T});
    console.log(JSON.stringify({ key, h, e }));`;
  const out = JSON.parse(execFileSync(process.execPath, ["--input-type=module", "-e", script],
    { cwd: new URL(".", import.meta.url), encoding: "utf8" }));
  assert.match(out.key, /^[0-9a-f-]{36}$/);
  assert.equal(out.h, await signWebhook("{}", "whsec_test", T));
  assert.deepEqual(out.e, {});
});
