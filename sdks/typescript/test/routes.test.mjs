// The client covers every route of infra/openapi.yaml: each operation is in OPERATIONS with the
// document's method and path (or in NOT_FOR_CLIENTS, with a reason), and the Topup method it
// names sends exactly that request. A route added to the document without a method fails here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Topup, OPERATIONS, NOT_FOR_CLIENTS } from "@topup/client";
import { ROOT, mockApi } from "./helpers.mjs";

/** [operationId, METHOD, path] of every operation: a small reader of the document's layout
 * (paths at two spaces, methods at four, each operation's `operationId` below its method). */
function documentOperations() {
  const lines = readFileSync(join(ROOT, "infra/openapi.yaml"), "utf8").split("\n");
  const out = [];
  let inPaths = false, path = null, method = null;
  for (const line of lines) {
    if (/^\S/.test(line)) { inPaths = line.startsWith("paths:"); continue; }
    if (!inPaths) continue;
    let m;
    if ((m = line.match(/^  (\/\S*):\s*$/))) { path = m[1]; method = null; }
    else if ((m = line.match(/^    (get|put|post|delete|patch):\s*$/))) method = m[1].toUpperCase();
    else if ((m = line.match(/^      operationId:\s*(\S+)\s*$/)) && path && method) out.push([m[1], method, path]);
  }
  return out;
}

const SAMPLES = {
  account_id: "acct-1", grant_id: "gr_1", hold_id: "hold_1", purchase_id: "pur_1", endpoint_id: "we_1", delivery_id: "wd_1",
  entity: "user:ann", payment_id: "pi_1",
};

// The arguments each method is called with here (beyond the path parameters, which come in the path's order).
const ARGS = {
  putAccount: [{ plan: "free", billingContacts: [] }], transactions: [], adjust: [{ amount: 1, reason: "r" }],
  setAutoRecharge: [{ enabled: false }], check: [{ consumable: "a", quantity: 1 }], setAlerts: [[1]], setLanes: [2],
  setEntity: [{ monthlyLimit: 5 }], notifications: [], debit: [{ consumable: "a", quantity: 1 }],
  debitBatch: [[{ consumable: "a", quantity: 1 }]], hold: [{ consumable: "a", quantity: 1 }], settleHold: [{ quantity: 1 }],
  purchase: [{}], revenueReport: ["2026-01"], createWebhookEndpoint: [{ url: "https://example.com/h", events: ["*"] }],
  refundPayment: [{ reason: "r" }],
};

test("every route of the document has a client method, with its method and path", () => {
  const ops = documentOperations();
  assert.ok(ops.length > 30, `read ${ops.length} operations`);
  const missing = ops.filter(([id]) => !(id in OPERATIONS) && !(id in NOT_FOR_CLIENTS)).map((o) => o.join(" "));
  assert.deepEqual(missing, [], "routes of infra/openapi.yaml the TypeScript client lacks");
  for (const [id, method, path] of ops) {
    if (!(id in OPERATIONS)) continue;
    assert.deepEqual([OPERATIONS[id].method, OPERATIONS[id].path], [method, path], id);
    assert.equal(typeof Topup.prototype[OPERATIONS[id].clientMethod], "function", OPERATIONS[id].clientMethod);
  }
});

test("nothing in the tables is missing from the document", () => {
  const ids = new Set(documentOperations().map(([id]) => id));
  assert.deepEqual(Object.keys(OPERATIONS).filter((id) => !ids.has(id)), [], "client operations the document no longer has");
  assert.deepEqual(Object.keys(NOT_FOR_CLIENTS).filter((id) => !ids.has(id)), [], "exclusions the document no longer has");
});

test("each method sends its operation's request", async () => {
  const api = await mockApi(() => [200, { next_cursor: null }]);
  try {
    const c = new Topup({ baseUrl: api.url, token: "t" });
    for (const [id, op] of Object.entries(OPERATIONS)) {
      const names = [...op.path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
      const before = api.requests.length;
      await c[op.clientMethod](...names.map((n) => SAMPLES[n]), ...(ARGS[op.clientMethod] ?? []));
      assert.equal(api.requests.length, before + 1, id);
      const req = api.requests.at(-1);
      const want = op.path.replace(/\{(\w+)\}/g, (_, n) => encodeURIComponent(SAMPLES[n]));
      assert.deepEqual([req.method, req.path], [op.method, want], id);
    }
  } finally {
    await api.close();
  }
});

test("every client method has its documentation in the types", () => {
  const dts = readFileSync(new URL(import.meta.resolve("@topup/client")).pathname.replace(/index\.js$/, "client.d.ts"), "utf8");
  for (const op of Object.values(OPERATIONS)) {
    assert.match(dts, new RegExp(`\\*/\\s*${op.clientMethod}\\(`), `${op.clientMethod} has no doc comment`);
  }
});
