"""The Python client against the served stack, as an app's backend uses it: run by
tests/sdks/clients.py with the python of a fresh virtualenv that installed the wheel, so
`import topup` is the installed package. Prints `ok name` or `FAIL name detail` per check.

    python scenario.py API_URL SERVICE_TOKEN ACCOUNT_ID
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import topup

FAILED = []


def check(name, ok, detail=""):
    print(f"{'ok' if ok else 'FAIL'}  python: {name}{'' if ok else ' ' + str(detail)[:600]}", flush=True)
    if not ok:
        FAILED.append(name)


class Receiver:
    """A webhook endpoint on 127.0.0.1 keeping each delivery's raw body and signature header."""

    def __init__(self):
        self.got = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                me.got.append((body, self.headers.get(topup.SIGNATURE_HEADER, "")))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/topup"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, timeout, account):
        """The deliveries so far, once one is about `account` (endpoints get every account's
        events: the other scenario's may come first)."""
        def mine():
            return any(json.loads(body).get("account_id") == account for body, _ in list(self.got))
        end = time.time() + timeout
        while time.time() < end and not mine():
            time.sleep(0.2)
        return list(self.got)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def main(api, token, acct):
    client = topup.Client(api, token)
    check("the installed package has a version", topup.__version__ == "0.1.0", topup.__version__)
    client.put_account(acct, "free", [{"email": f"{acct}@example.com"}])
    grant = client.adjust(acct, 10_000_000, "sdk scenario grant")
    check("adjust grants $10 (a key made by the client)", grant.get("balance_after") == 10_000_000, grant)

    # A debit, then the same key again: the same answer, charged once.
    first = client.debit(acct, "api_calls", 1_500, idempotency_key=f"{acct}-u1")
    check("debit 1,500 api_calls: 1,000 from the allowance, $0.50 from credits",
          (first.get("from_allowance"), first.get("from_credits"), first.get("balance")) == (1_000, 500_000, 9_500_000), first)
    again = client.debit(acct, "api_calls", 1_500, idempotency_key=f"{acct}-u1")
    check("the same idempotency key again answers the same debit", again == first, f"{again} vs {first}")

    # 402 as a TopupError with the consumable's code and the balance.
    try:
        client.debit(acct, "api_calls", 1_000_000_000)
        check("a debit past the balance raises TopupError 402", False, "no error")
    except topup.TopupError as e:
        check("a debit past the balance raises TopupError 402 usage_limit_reached with the balance",
              (e.status, e.code, e.balance) == (402, "usage_limit_reached", 9_500_000), repr(e))

    ok = client.check(acct, "api_calls", 1_000)
    no = client.check(acct, "api_calls", 1_000_000_000)
    check("check: 1,000 calls allowed at $1.00; a billion refused as insufficient_credits",
          (ok["allowed"], ok["reason"], ok["cost"], no["allowed"], no["reason"])
          == (True, "ok", 1_000_000, False, "insufficient_credits"), f"{ok} {no}")

    view = client.credits(acct)
    used = {a["consumable"]: (a["used"], a["included"]) for a in view.get("allowances", [])}
    check("the credits view: balance $9.50, api_calls 1,000 of 1,000 used",
          view.get("balance") == 9_500_000 and used.get("api_calls") == (1_000, 1_000), view)

    # The batching helper: 20 debits from 10 threads, each caller its own result; one refused.
    results, errors, lock = {}, {}, threading.Lock()
    with topup.DebitBatcher(client) as batcher:
        def one(i):
            try:
                r = batcher.debit(acct, "api_calls", 100 if i else 1_000_000_000, idempotency_key=f"{acct}-b{i}")
                with lock:
                    results[i] = r
            except topup.TopupError as e:
                with lock:
                    errors[i] = (e.status, e.code)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    txs = {r["transaction_id"] for r in results.values()}
    check("DebitBatcher: 19 debits of 100 calls applied, each its own transaction; the huge one refused 402",
          len(results) == 19 and len(txs) == 19 and all(r["from_credits"] == 100_000 for r in results.values())
          and errors == {0: (402, "usage_limit_reached")}, f"{results} {errors}")
    view = client.credits(acct)
    check("the balance took exactly the batch: $9.50 − 19 × $0.10 = $7.60", view["balance"] == 7_600_000, view["balance"])

    entries = list(client.iter_transactions(acct, page_size=3))
    check("iter_transactions pages through every entry (grant, debit, 19 batched)", len(entries) == 21, len(entries))

    # Webhook verification on a real delivery: a debit crossing the $5 low-balance threshold.
    receiver = Receiver()
    endpoint = None
    try:
        endpoint = client.create_webhook_endpoint(receiver.url, ["balance.low"], description="python sdk scenario")
        client.debit(acct, "api_calls", 3_000, idempotency_key=f"{acct}-low")
        got = receiver.wait(45, acct)
        mine = []
        for body, header in got:
            try:
                event = topup.verify_webhook(body, header, endpoint["secret"])
                if event.get("account_id") == acct:
                    mine.append(event)
            except topup.SignatureError as e:
                check("a delivery verifies with the endpoint's secret", False, repr(e))
        check("a real balance.low delivery verifies with verify_webhook",
              any(e["type"] == "balance.low" and e["data"].get("balance") == 4_600_000 for e in mine), got[:2])
        refused = []
        for body, header in got[:1]:
            for bad in ((body, header, "whsec_wrong"), (body + b" ", header, endpoint["secret"])):
                try:
                    topup.verify_webhook(*bad)
                    refused.append(False)
                except topup.SignatureError:
                    refused.append(True)
        check("the same delivery with another secret or a changed body raises SignatureError",
              refused == [True, True], refused)
    finally:
        if endpoint:
            client.delete_webhook_endpoint(endpoint["id"])
        receiver.close()
    return 1 if FAILED else 0


if __name__ == "__main__":
    try:
        sys.exit(main(*sys.argv[1:4]))
    except Exception as e:  # a scenario that could not run to the end is a failure, with why
        check("ran to the end", False, repr(e))
        sys.exit(1)
