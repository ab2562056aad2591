// A scripted HTTP server on 127.0.0.1 for the tests: records every request and answers each with
// what `handler(req)` returns, `[status, body, headers]`, or `null` to drop the connection.
import { createServer } from "node:http";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository (the tests read infra/openapi.yaml and the Rust sources); TOPUP_REPO_ROOT when the tests run from a copy. */
export const ROOT = process.env.TOPUP_REPO_ROOT ?? resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

export async function mockApi(handler) {
  const requests = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const raw = Buffer.concat(chunks).toString();
      const url = new URL(req.url, "http://x");
      const r = { method: req.method, path: url.pathname, query: Object.fromEntries(url.searchParams), headers: req.headers,
                  raw, body: raw ? JSON.parse(raw) : undefined };
      requests.push(r);
      const answer = await handler(r);
      if (answer === null) { req.socket.destroy(); return; }
      const [status, body, headers = {}] = answer;
      const data = typeof body === "string" ? body : JSON.stringify(body);
      res.writeHead(status, { "content-type": "application/json", ...headers });
      res.end(data);
    });
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(ok); }),
  };
}

/** Answers the requests with these in turn, then 200 `{}`. */
export function script(...answers) {
  return () => (answers.length ? answers.shift() : [200, {}]);
}

export function error(status, code, extra = {}, headers = {}) {
  return [status, { error: { code, message: code }, ...extra }, headers];
}
