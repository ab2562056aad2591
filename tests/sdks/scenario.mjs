// The TypeScript client against the served stack, as an app's backend uses it: copied by
// tests/sdks/clients.py into a fresh folder that installed the packed tarball, so
// "@topup/client" is the installed package. Prints `ok name` or `FAIL name detail` per check.
//
//     node scenario.mjs API_URL SERVICE_TOKEN ACCOUNT_ID
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Topup, TopupError, DebitBatcher, verifyWebhook, SignatureError, SIGNATURE_HEADER } from "@topup/client";

const [api, token, acct] = process.argv.slice(2);
const failed = [];
function check(name, ok, detail = "") {
  console.log(`${ok ? "ok" : "FAIL"}  typescript: ${name}${ok ? "" : " " + JSON.stringify(detail).slice(0, 600)}`);
  if (!ok) failed.push(name);
}

function receiver() {
  const got = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      got.push([Buffer.concat(chunks), req.headers[SIGNATURE_HEADER.toLowerCase()] ?? ""]);
      res.writeHead(200).end();
    });
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok({
    url: `http://127.0.0.1:${server.address().port}/hooks/topup`,
    got,
    // The deliveries so far, once one is about `account` (endpoints get every account's events:
    // the other scenario's may come first).
    async wait(ms, account) {
      const mine = () => got.some(([body]) => JSON.parse(body.toString()).account_id === account);
      const end = Date.now() + ms;
      while (Date.now() < end && !mine()) await new Promise((r) => setTimeout(r, 200));
      return [...got];
    },
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  })));
}

async function main() {
  const topup = new Topup({ baseUrl: api, token });
  const pkg = JSON.parse(readFileSync(createRequire(import.meta.url).resolve("@topup/client/package.json"), "utf8"));
  check("the installed package has a version", pkg.version === "0.1.0", pkg.version);
  await topup.putAccount(acct, { plan: "free", billingContacts: [{ email: `${acct}@example.com` }] });
  const grant = await topup.adjust(acct, { amount: 10_000_000, reason: "sdk scenario grant" });
  check("adjust grants $10 (a key made by the client)", grant.balance_after === 10_000_000, grant);

  const first = await topup.debit(acct, { consumable: "api_calls", quantity: 1_500, idempotencyKey: `${acct}-u1` });
  check("debit 1,500 api_calls: 1,000 from the allowance, $0.50 from credits",
    first.from_allowance === 1_000 && first.from_credits === 500_000 && first.balance === 9_500_000, first);
  const again = await topup.debit(acct, { consumable: "api_calls", quantity: 1_500, idempotencyKey: `${acct}-u1` });
  check("the same idempotency key again answers the same debit", JSON.stringify(again) === JSON.stringify(first), [again, first]);

  try {
    await topup.debit(acct, { consumable: "api_calls", quantity: 1_000_000_000 });
    check("a debit past the balance throws TopupError 402", false, "no error");
  } catch (e) {
    check("a debit past the balance throws TopupError 402 usage_limit_reached with the balance",
      e instanceof TopupError && e.status === 402 && e.code === "usage_limit_reached" && e.balance === 9_500_000, String(e));
  }

  const ok = await topup.check(acct, { consumable: "api_calls", quantity: 1_000 });
  const no = await topup.check(acct, "api_calls", 1_000_000_000);
  check("check: 1,000 calls allowed at $1.00; a billion refused as insufficient_credits",
    ok.allowed === true && ok.reason === "ok" && ok.cost === 1_000_000 && no.allowed === false && no.reason === "insufficient_credits",
    [ok, no]);

  let view = await topup.credits(acct);
  const calls = view.allowances.find((a) => a.consumable === "api_calls");
  check("the credits view: balance $9.50, api_calls 1,000 of 1,000 used",
    view.balance === 9_500_000 && calls?.used === 1_000 && calls?.included === 1_000, view);

  const batcher = new DebitBatcher(topup);
  const settled = await Promise.allSettled(Array.from({ length: 20 }, (_, i) =>
    batcher.debit(acct, { consumable: "api_calls", quantity: i ? 100 : 1_000_000_000, idempotencyKey: `${acct}-b${i}` })));
  await batcher.close();
  const applied = settled.filter((s) => s.status === "fulfilled").map((s) => s.value);
  const refused = settled.filter((s) => s.status === "rejected").map((s) => [s.reason.status, s.reason.code]);
  check("DebitBatcher: 19 debits of 100 calls applied, each its own transaction; the huge one refused 402",
    applied.length === 19 && new Set(applied.map((r) => r.transaction_id)).size === 19
    && applied.every((r) => r.from_credits === 100_000) && JSON.stringify(refused) === JSON.stringify([[402, "usage_limit_reached"]]),
    { applied: applied.length, refused });
  view = await topup.credits(acct);
  check("the balance took exactly the batch: $9.50 − 19 × $0.10 = $7.60", view.balance === 7_600_000, view.balance);

  let entries = 0;
  for await (const _ of topup.iterTransactions(acct, { pageSize: 3 })) entries++;
  check("iterTransactions pages through every entry (grant, debit, 19 batched)", entries === 21, entries);

  const hook = await receiver();
  let endpoint;
  try {
    endpoint = await topup.createWebhookEndpoint({ url: hook.url, events: ["balance.low"], description: "typescript sdk scenario" });
    await topup.debit(acct, { consumable: "api_calls", quantity: 3_000, idempotencyKey: `${acct}-low` });
    const got = await hook.wait(45_000, acct);
    const mine = [];
    for (const [body, header] of got) {
      try {
        const event = await verifyWebhook(body, header, endpoint.secret);
        if (event.account_id === acct) mine.push(event);
      } catch (e) {
        check("a delivery verifies with the endpoint's secret", false, String(e));
      }
    }
    check("a real balance.low delivery verifies with verifyWebhook",
      mine.some((e) => e.type === "balance.low" && e.data.balance === 4_600_000), got.map(([b]) => b.toString()).slice(0, 2));
    const refusals = [];
    for (const [body, header] of got.slice(0, 1)) {
      for (const [b, s] of [[body, "whsec_wrong"], [Buffer.concat([body, Buffer.from(" ")]), endpoint.secret]]) {
        refusals.push(await verifyWebhook(b, header, s).then(() => false, (e) => e instanceof SignatureError));
      }
    }
    check("the same delivery with another secret or a changed body rejects with SignatureError",
      JSON.stringify(refusals) === "[true,true]", refusals);
  } finally {
    if (endpoint) await topup.deleteWebhookEndpoint(endpoint.id);
    await hook.close();
  }
}

try {
  await main();
} catch (e) {
  check("ran to the end", false, String(e?.stack ?? e));
}
process.exit(failed.length ? 1 : 0);
