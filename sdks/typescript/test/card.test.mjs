// The card's module: importable where there is no DOM, with no imports of its own (the API serves
// the file as it is), and the copy credits-api includes is this build's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./helpers.mjs";

const cardUrl = new URL(import.meta.resolve("@topup/client/card"));

test("the card imports in Node without a DOM and formats amounts as the billing page does", async () => {
  const card = await import("@topup/client/card");
  assert.equal(typeof card.TopupCreditsElement, "function");
  const usd = { code: "usd", micros_per_unit: 1_000_000 };
  assert.equal(card.formatUnits(8_500_000, usd), "$8.50");
  assert.equal(card.formatUnits(-1_250_000, usd), "-$1.25");
  assert.equal(card.formatUnits(200_000_000, { code: "minute", micros_per_unit: 1_000_000 }), "200 minutes");
  assert.equal(card.formatUnits(1_000_000, { code: "credit", micros_per_unit: 1_000_000 }), "1 credit");
  assert.equal(card.consumableLabel("api_calls"), "API calls");
  assert.equal(card.consumableLabel("voice_minutes"), "Voice minutes");
});

test("the card's module has no imports, so the API can serve it as it is", () => {
  const js = readFileSync(cardUrl, "utf8");
  assert.doesNotMatch(js, /^\s*import\s/m);
  assert.doesNotMatch(js, /\bimport\s*\(/);
  assert.match(js, /customElements\.define\(name, TopupCreditsElement\)/);
});

test("the copy credits-api serves is this build of the card (npm run build refreshes it)", () => {
  const served = readFileSync(join(ROOT, "functions/credits-api/src/topup-credits.js"), "utf8");
  assert.equal(served, readFileSync(cardUrl, "utf8"));
});
