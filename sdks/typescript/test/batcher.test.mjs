// DebitBatcher against a scripted batch endpoint: batches of at most maxBatch per account, sent
// after maxWaitMs, each caller with its own result.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DebitBatcher, Topup, TopupError } from "@topup/client";
import { mockApi, script, error } from "./helpers.mjs";

/** Applies every event (balance = its quantity) but the keys in `refuse` (402); answers in reverse order. */
function batchApi(refuse = new Set()) {
  return (req) => [200, { results: req.body.events.map((e) => refuse.has(e.idempotency_key)
    ? { idempotency_key: e.idempotency_key, status: 402, replayed: false, error: { code: "out_of_credits", message: "Out.", balance: 0 } }
    : { idempotency_key: e.idempotency_key, status: 200, replayed: false, balance: e.quantity, from_credits: e.quantity,
        from_allowance: 0, transaction_id: `tx_${e.idempotency_key}` }).reverse() }];
}

function client(api) {
  const c = new Topup({ baseUrl: api.url, token: "tok", backoffMs: 1 });
  c.sleep = async () => {};
  return c;
}

async function withApi(handler, fn) {
  const api = await mockApi(handler);
  try { await fn(api); } finally { await api.close(); }
}

test("120 concurrent debits get their own results in batches of at most 50", () => withApi(batchApi(new Set(["k-7"])), async (api) => {
  const batcher = new DebitBatcher(client(api));
  const out = await Promise.all(Array.from({ length: 120 }, (_, i) =>
    batcher.debit("acme", { consumable: "api_calls", quantity: i, idempotencyKey: `k-${i}` })
      .then((r) => [r.status, r.balance, r.transaction_id], (e) => [e.status, e.code, e instanceof TopupError])));
  out.forEach((got, i) => assert.deepEqual(got, i === 7 ? [402, "out_of_credits", true] : [200, i, `tx_k-${i}`]));
  const sizes = api.requests.map((r) => r.body.events.length);
  assert.equal(sizes.reduce((a, b) => a + b, 0), 120);
  assert.ok(sizes.every((s) => s <= 50), String(sizes));
  assert.ok(sizes.length <= 4, `grouped: ${sizes}`);
  await batcher.close();
}));

test("a full batch goes at once, the rest after maxWaitMs", () => withApi(batchApi(), async (api) => {
  const batcher = new DebitBatcher(client(api), { maxBatch: 3, maxWaitMs: 200 });
  const started = Date.now();
  const first = [0, 1, 2].map((i) => batcher.debit("acme", { consumable: "a", quantity: i }));
  const fourth = batcher.debit("acme", { consumable: "a", quantity: 3 });
  await Promise.all(first);
  assert.deepEqual(api.requests.map((r) => r.body.events.length), [3]);
  assert.ok(Date.now() - started < 200, "the full batch did not wait");
  assert.equal((await fourth).balance, 3);
  assert.ok(Date.now() - started >= 190, "the fourth waited for maxWaitMs");
  assert.deepEqual(api.requests.map((r) => r.body.events.length), [3, 1]);
}));

test("accounts are batched apart", () => withApi(batchApi(), async (api) => {
  const batcher = new DebitBatcher(client(api));
  const [a, b] = await Promise.all([batcher.debit("acme", { consumable: "a", quantity: 1 }),
    batcher.debit("beta", { consumable: "a", quantity: 2 })]);
  assert.deepEqual([a.balance, b.balance], [1, 2]);
  assert.deepEqual(api.requests.map((r) => r.path).sort(), ["/v1/accounts/acme/usage/batch", "/v1/accounts/beta/usage/batch"]);
}));

test("a retried batch keeps every key", () => {
  const inner = batchApi();
  let first = true;
  return withApi((req) => { if (first) { first = false; return error(503, "account_busy"); } return inner(req); }, async (api) => {
    const batcher = new DebitBatcher(client(api));
    const got = await Promise.all([0, 1, 2].map((i) => batcher.debit("acme", { consumable: "a", quantity: i })));
    assert.deepEqual(got.map((r) => r.balance), [0, 1, 2]);
    const sent = api.requests.map((r) => r.body.events.map((e) => e.idempotency_key));
    assert.equal(sent.length, 2);
    assert.deepEqual(sent[0], sent[1]);
  });
});

test("a refused batch rejects every caller in it; a reply that does not match too", async () => {
  await withApi(script(error(400, "invalid_request")), async (api) => {
    const batcher = new DebitBatcher(client(api));
    const got = await Promise.allSettled([1, 2].map(() => batcher.debit("acme", { consumable: "a", quantity: 1 })));
    assert.ok(got.every((g) => g.status === "rejected" && g.reason.status === 400 && g.reason.code === "invalid_request"));
  });
  await withApi(script([200, { results: [{ idempotency_key: "other", status: 200 }] }]), async (api) => {
    const batcher = new DebitBatcher(client(api));
    await assert.rejects(batcher.debit("acme", { consumable: "a", quantity: 1 }), (e) => e.code === "bad_reply");
  });
});

test("flush sends now, and close refuses more", () => withApi(batchApi(), async (api) => {
  const batcher = new DebitBatcher(client(api), { maxWaitMs: 30_000 });
  const p = batcher.debit("acme", { consumable: "a", quantity: 5 });
  await new Promise((ok) => setTimeout(ok, 10));
  await batcher.flush();
  assert.equal(api.requests.length, 1);
  assert.equal((await p).balance, 5);
  await batcher.close();
  await assert.rejects(batcher.debit("acme", { consumable: "a", quantity: 1 }), (e) => e.code === "batcher_closed");
}));
