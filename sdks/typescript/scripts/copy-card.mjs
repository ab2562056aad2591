// Copies the built card (dist/card.js, a module with no imports) to where credits-api includes
// it in its binary (include_str!), so the Rust build never needs node. `npm test` checks that the
// two are the same (test/card.test.mjs).
import { copyFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const to = join(here, "..", "..", "..", "functions", "credits-api", "src", "topup-credits.js");
copyFileSync(join(here, "..", "dist", "card.js"), to);
console.log(`copied dist/card.js to functions/credits-api/src/topup-credits.js`);
