// The client against a scripted local server: requests as the API documents them, keys made once
// and reused across retries, retries with backoff and Retry-After, errors as TopupError, pages.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { Topup, TopupError } from "@topup/client";
import { mockApi, script, error } from "./helpers.mjs";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function client(api, options = {}) {
  const c = new Topup({ baseUrl: api.url, token: "tok", backoffMs: 1, ...options });
  c.sleeps = [];
  c.sleep = async (ms) => { c.sleeps.push(ms); };
  return c;
}

async function withApi(handler, fn) {
  const api = await mockApi(handler);
  try { await fn(api); } finally { await api.close(); }
}

test("debit posts usage with the token and a generated key", () => withApi(
  script([200, { from_allowance: 0, from_credits: 1500, balance: 98500, transaction_id: "tx_1" }]), async (api) => {
    const got = await client(api).debit("acme", { consumable: "api_calls", quantity: 1500 });
    assert.deepEqual(got, { from_allowance: 0, from_credits: 1500, balance: 98500, transaction_id: "tx_1" });
    const [req] = api.requests;
    assert.equal(req.method, "POST");
    assert.equal(req.path, "/v1/accounts/acme/usage");
    assert.equal(req.headers.authorization, "Bearer tok");
    assert.equal(req.headers["content-type"], "application/json");
    assert.equal(req.body.consumable, "api_calls");
    assert.equal(req.body.quantity, 1500);
    assert.match(req.body.idempotency_key, UUID);
    assert.ok(!("entity" in req.body));
  }));

test("a given key and entity are sent as they are; two debits without keys get two", () => withApi(script(), async (api) => {
  const c = client(api);
  await c.debit("acme", { consumable: "api_calls", quantity: 1, idempotencyKey: "u-1", entity: "user:ann" });
  await c.debit("acme", { consumable: "api_calls", quantity: 1 });
  await c.debit("acme", { consumable: "api_calls", quantity: 1 });
  assert.deepEqual(api.requests[0].body, { consumable: "api_calls", quantity: 1, idempotency_key: "u-1", entity: "user:ann" });
  assert.notEqual(api.requests[1].body.idempotency_key, api.requests[2].body.idempotency_key);
}));

test("check sends its query, in either form", () => withApi(
  () => [200, { allowed: false, reason: "insufficient_credits", cost: 5, available: 0 }], async (api) => {
    const c = client(api);
    const a = await c.check("acme", { consumable: "api_calls", quantity: 3, entity: "proj:x" });
    await c.check("acme", "api_calls", 4);
    assert.deepEqual(a, { allowed: false, reason: "insufficient_credits", cost: 5, available: 0 });
    assert.equal(api.requests[0].method, "GET");
    assert.equal(api.requests[0].path, "/v1/accounts/acme/credits/check");
    assert.deepEqual(api.requests[0].query, { consumable: "api_calls", quantity: "3", entity: "proj:x" });
    assert.deepEqual(api.requests[1].query, { consumable: "api_calls", quantity: "4" });
    assert.equal(api.requests[0].raw, "");
  }));

test("path parameters are percent-encoded, and an empty one is refused before sending", () => withApi(script(), async (api) => {
  const c = client(api);
  await c.credits("a b/c?");
  assert.equal(api.requests[0].path, "/v1/accounts/a%20b%2Fc%3F/credits");
  await assert.rejects(c.credits(""), TypeError);
  assert.equal(api.requests.length, 1);
}));

test("a token callback is asked before every request", () => withApi(script(), async (api) => {
  const tokens = ["t1", "t2"];
  const c = new Topup({ baseUrl: api.url, token: async () => tokens.shift() });
  await c.credits("acme");
  await c.credits("acme");
  assert.deepEqual(api.requests.map((r) => r.headers.authorization), ["Bearer t1", "Bearer t2"]);
}));

test("a purchase sends its key as the Idempotency-Key header, the same on a retry", () => withApi(
  script(error(503, "payment_provider_unavailable"), [201, { purchase_id: "pur_1" }]), async (api) => {
    const got = await client(api).purchase("acme", { amount: 2000 });
    assert.equal(got.purchase_id, "pur_1");
    assert.equal(api.requests.length, 2);
    assert.match(api.requests[0].headers["idempotency-key"], UUID);
    assert.equal(api.requests[0].headers["idempotency-key"], api.requests[1].headers["idempotency-key"]);
    assert.deepEqual(api.requests[0].body, { amount: 2000 });
  }));

test("setEntity sends only what is given, and null for none", () => withApi(script(), async (api) => {
  const c = client(api);
  await c.setEntity("acme", "user:ann", { monthlyLimit: null });
  await c.setEntity("acme", "user:ann", { name: "Ann" });
  assert.deepEqual(api.requests.map((r) => r.body), [{ monthly_limit: null }, { name: "Ann" }]);
}));

test("the CSV export answers text", () => withApi(
  script([200, "id,kind\n", { "content-type": "text/csv" }]), async (api) => {
    assert.equal(await client(api).transactionsCsv("acme"), "id,kind\n");
  }));

test("a 402 is a TopupError with its status, code and balance, never retried", () => withApi(
  script([402, { error: { code: "usage_limit_reached", message: "Out of credits.", consumable: "api_calls" }, balance: 0 }]),
  async (api) => {
    const e = await client(api).debit("acme", { consumable: "api_calls", quantity: 1 }).then(() => null, (e) => e);
    assert.ok(e instanceof TopupError);
    assert.equal(e.status, 402);
    assert.equal(e.code, "usage_limit_reached");
    assert.equal(e.balance, 0);
    assert.equal(e.detail, "Out of credits.");
    assert.equal(api.requests.length, 1);
  }));

test("final statuses are not retried", async () => {
  for (const [status, code] of [[400, "invalid_request"], [401, "unauthenticated"], [409, "idempotency_conflict"],
    [422, "invalid_quantity"], [500, "internal"]]) {
    await withApi(script(error(status, code)), async (api) => {
      await assert.rejects(client(api).debit("acme", { consumable: "a", quantity: 1 }), (e) => e.status === status && e.code === code);
      assert.equal(api.requests.length, 1, String(status));
    });
  }
});

test("a body that is not the error shape still gives a code", () => withApi(
  script([404, "Not Found", { "content-type": "text/plain" }]), async (api) => {
    await assert.rejects(client(api).credits("acme"), (e) => e.status === 404 && e.code === "http_404");
  }));

test("a success that is not JSON is a TopupError", () => withApi(
  script([200, "<html>proxy</html>", { "content-type": "text/html" }]), async (api) => {
    await assert.rejects(client(api).credits("acme"), (e) => e instanceof TopupError && e.status === 200 && e.code === "invalid_response");
  }));

test("no server is a connection error (status 0) after the retries", async () => {
  const s = createServer();
  await new Promise((ok) => s.listen(0, "127.0.0.1", ok));
  const port = s.address().port;
  await new Promise((ok) => s.close(ok));
  const c = new Topup({ baseUrl: `http://127.0.0.1:${port}`, token: "t", maxRetries: 2, backoffMs: 1 });
  await assert.rejects(c.credits("acme"), (e) => e instanceof TopupError && e.status === 0 && e.code === "connection_error");
});

test("429, 503 and a dropped connection are retried with one key", () => withApi(
  script(error(429, "too_many_requests"), error(503, "account_busy"), null, [200, { balance: 1 }]), async (api) => {
    const c = client(api);
    assert.deepEqual(await c.debit("acme", { consumable: "api_calls", quantity: 1 }), { balance: 1 });
    const keys = api.requests.map((r) => r.body.idempotency_key);
    assert.equal(keys.length, 4);
    assert.equal(new Set(keys).size, 1);
    assert.equal(c.sleeps.length, 3);
  }));

test("Retry-After in seconds and as a date is honoured, and capped", () => withApi(
  script(error(503, "account_busy", {}, { "retry-after": "2" }),
    error(429, "too_many_requests", {}, { "retry-after": new Date(Date.now() + 30_000).toUTCString() }),
    error(429, "too_many_requests", {}, { "retry-after": "3600" })), async (api) => {
    const c = client(api, { maxRetryAfterMs: 45_000 });
    await c.credits("acme");
    assert.ok(c.sleeps[0] >= 2000, String(c.sleeps[0]));
    assert.ok(c.sleeps[1] > 25_000, String(c.sleeps[1]));
    assert.equal(c.sleeps[2], 45_000);
  }));

test("backoff grows exponentially with jitter up to the cap", () => withApi(
  script(...Array(5).fill(error(502, "upstream_unavailable"))), async (api) => {
    const c = client(api, { backoffMs: 1000, maxBackoffMs: 4000, maxRetries: 5 });
    await c.credits("acme");
    [1000, 2000, 4000, 4000, 4000].forEach((step, i) => assert.ok(c.sleeps[i] >= step / 2 && c.sleeps[i] <= step, `${c.sleeps[i]} ${step}`));
  }));

test("retries stop after maxRetries with the last error", () => withApi(
  script(...Array(10).fill(error(503, "account_busy"))), async (api) => {
    await assert.rejects(client(api, { maxRetries: 2 }).debit("acme", { consumable: "a", quantity: 1 }),
      (e) => e.status === 503 && e.code === "account_busy");
    assert.equal(api.requests.length, 3);
  }));

test("a request without a key is not repeated after it may have been done", async () => {
  const endpoint = { url: "https://example.com/h", events: ["*"] };
  await withApi(script(error(502, "upstream_unavailable")), async (api) => {
    await assert.rejects(client(api).createWebhookEndpoint(endpoint), (e) => e.status === 502);
    assert.equal(api.requests.length, 1);
  });
  await withApi(script(null), async (api) => {
    await assert.rejects(client(api).createWebhookEndpoint(endpoint), (e) => e.code === "connection_error");
    assert.equal(api.requests.length, 1);
  });
  await withApi(script(error(503, "account_busy"), [201, { id: "we_1" }]), async (api) => {
    assert.deepEqual(await client(api).createWebhookEndpoint(endpoint), { id: "we_1" });
    assert.equal(api.requests.length, 2);
  });
});

test("iterTransactions follows next_cursor to the end", () => {
  const pages = { "": [[1, 2], "c1"], c1: [[3, 4], "c2"], c2: [[5], null] };
  return withApi((req) => {
    const [items, next] = pages[req.query.cursor ?? ""];
    return [200, { transactions: items.map((i) => ({ id: `tx_${i}` })), next_cursor: next }];
  }, async (api) => {
    const ids = [];
    for await (const t of client(api).iterTransactions("acme", { pageSize: 2, entity: "user:ann" })) ids.push(t.id);
    assert.deepEqual(ids, ["tx_1", "tx_2", "tx_3", "tx_4", "tx_5"]);
    assert.deepEqual(api.requests.map((r) => r.query.cursor), [undefined, "c1", "c2"]);
    assert.ok(api.requests.every((r) => r.query.limit === "2" && r.query.entity === "user:ann"));
  });
});

test("iterWebhookDeliveries pages too", () => withApi((req) => req.query.cursor === "n"
  ? [200, { deliveries: [{ id: "wd_2" }], next_cursor: null }]
  : [200, { deliveries: [{ id: "wd_1" }], next_cursor: "n" }], async (api) => {
  const ids = [];
  for await (const d of client(api).iterWebhookDeliveries("we_1", { pageSize: 1 })) ids.push(d.id);
  assert.deepEqual(ids, ["wd_1", "wd_2"]);
  assert.equal(api.requests[0].path, "/v1/webhook-endpoints/we_1/deliveries");
}));

test("debitBatch gives each event without a key its own", () => withApi(script(), async (api) => {
  await client(api).debitBatch("acme", [{ consumable: "a", quantity: 1 }, { consumable: "a", quantity: 2, idempotencyKey: "k2" },
    { consumable: "a", quantity: 3, entity: null }]);
  const events = api.requests[0].body.events;
  assert.equal(events[1].idempotency_key, "k2");
  assert.ok(!("entity" in events[2]));
  assert.equal(new Set(events.map((e) => e.idempotency_key)).size, 3);
}));
