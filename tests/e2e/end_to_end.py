"""The end-to-end checks of `./scripts/test`, through a stack that scripts/stack.py serves:
the functions under `cargo lambda watch`, the API router, the template's EventBridge rules
(scripts/wiring.py), with moto playing AWS and localstripe playing Stripe.

`run` drives one usd-overage account through the served API: accounts, grants, usage and holds,
authentication and unknown routes; the served debit's BalanceLow on the bus and the emails of a
low and an empty balance (rule → notify) and the notifications list; buying credits through a
Checkout Session, paid by card and by a bank debit that fails (localstripe's signed events → the
webhook), with their statuses, entries and email; saving a card (SetupIntent) and a debit that
triggers one auto-recharge; `topup-reconcile` agreeing with Stripe; a notification that fails past
notify's retries (SES throttling) landing in its failure queue and `scripts/redrive` delivering it; the billing page's free-form
amount in headless Chromium (tests/browser/billing_test.py); the schemathesis contract fuzz of
infra/openapi.yaml; and every sample event of events/expected.json through `cargo lambda invoke`.
`browser_tests` serves a voice-minutes stack and runs the billing page's scenarios against it.

Each scenario takes the `Checks` tally (which prints "  ok    name" or "  FAIL  name detail"
per check) and `stack_api`, the plumbing scripts/stack.py hands over (`stack.stack_api()`:
ROOT, LOGS, REGION, Stack, free_port, create_resources, function_env, start_functions,
register_webhook, token_for), so this module never imports the script. stack.py imports it with
tests/e2e/ on sys.path: `import end_to_end`.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        if ok:
            self.passed += 1
            print(f"  ok    {name}", flush=True)
        else:
            self.failed += 1
            print(f"  FAIL  {name} {detail}", flush=True)


def http(method: str, url: str, token: str | None = None, body: dict | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if token:
        req.add_header("authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def run(moto: str, stripe: str, secret: str, checks: Checks, stack_api) -> None:
    """The end-to-end scenario (see the module's docstring) against a usd-overage stack that it
    serves on the table and bus `topup` of the emulators at `moto` and `stripe`; tokens are
    signed with `secret`. `stack_api` is scripts/stack.py's plumbing (`stack.stack_api()`)."""
    import boto3

    stack = stack_api.Stack()
    ses = None
    try:
        stack_api.create_resources(moto, "topup", "topup", "example.com")
        kw = dict(endpoint_url=moto, region_name=stack_api.REGION, aws_access_key_id="test", aws_secret_access_key="test")
        # Observe the bus as a consumer would: a rule with an SQS target.
        sqs = boto3.client("sqs", **kw)
        q = sqs.create_queue(QueueName="e2e-events")["QueueUrl"]
        ev = boto3.client("events", **kw)
        ev.put_rule(Name="e2e-all", EventBusName="topup", EventPattern=json.dumps({"source": ["topup"]}))
        ev.put_targets(Rule="e2e-all", EventBusName="topup",
                       Targets=[{"Id": "q", "Arn": "arn:aws:sqs:us-east-1:123456789012:e2e-events"}])

        env = stack_api.function_env(moto, "usd-overage", "topup", "topup", secret, stripe)
        # The functions reach SES v2 through a gate that can throttle (the SDK's per-service
        # endpoint variable); everything else goes straight to moto.
        ses = SesGate(moto)
        env["AWS_ENDPOINT_URL_SESV2"] = ses.url
        watch_port, api_port = stack_api.free_port(), stack_api.free_port()
        r = stack_api.start_functions(stack, env, watch_port, api_port, reload=False)
        stack_api.register_webhook(stripe, api_port)
        api = f"http://127.0.0.1:{api_port}"
        svc = stack_api.token_for("service", None, secret)
        owner = stack_api.token_for("owner", "e2e", secret)

        s, b = http("PUT", f"{api}/v1/accounts/e2e", svc, {"plan": "free", "billing_contacts": [{"email": "ops@example.com"}]})
        checks.check("PUT /v1/accounts/e2e → 201", s == 201, f"{s} {b}")
        s, b = http("POST", f"{api}/v1/accounts/e2e/credits/adjustments", svc,
                    {"amount": 6_000_000, "reason": "e2e grant", "idempotency_key": "g1"})
        checks.check("POST adjustments → 201", s == 201, f"{s} {b}")
        s, b = http("POST", f"{api}/v1/accounts/e2e/usage", svc,
                    {"consumable": "api_calls", "quantity": 2_500, "idempotency_key": "u1"})
        checks.check("POST usage crosses $5 → 200, $1.50 from credits",
                     s == 200 and b.get("from_credits") == 1_500_000 and b.get("balance") == 4_500_000, f"{s} {b}")
        s, b = http("POST", f"{api}/v1/accounts/e2e/usage/holds", svc,
                    {"consumable": "voice_minutes", "quantity": 30, "idempotency_key": "h1"})
        checks.check("POST holds → 201", s == 201, f"{s} {b}")
        hold_id = (b or {}).get("hold_id", "missing")
        s, b = http("POST", f"{api}/v1/accounts/e2e/usage/holds/{hold_id}/settle", svc, {"quantity": 12})
        checks.check("POST settle → 200", s == 200 and b.get("from_hold") == 12, f"{s} {b}")
        s, b = http("GET", f"{api}/v1/accounts/e2e/credits", owner)
        checks.check("GET credits as owner → 200 with balance and low badge",
                     s == 200 and b.get("balance") == 4_400_000 and b.get("low_balance") is True, f"{s} {b}")
        s, b = http("GET", f"{api}/v1/accounts/e2e/credits/transactions?limit=2", owner)
        checks.check("GET transactions?limit=2 → a page and a cursor",
                     s == 200 and len(b.get("transactions", [])) == 2 and b.get("next_cursor"), f"{s} {b}")
        s, b = http("GET", f"{api}/v1/accounts/e2e/credits")
        checks.check("no token → 401", s == 401, f"{s} {b}")
        s, b = http("GET", f"{api}/v1/nowhere", svc)
        checks.check("unknown route → 404", s == 404, f"{s} {b}")

        got = []
        deadline = time.time() + 10
        while time.time() < deadline and not got:
            for m in sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
                got.append(json.loads(m["Body"]))
        low = [e for e in got if e.get("detail-type") == "BalanceLow"]
        checks.check("the served debit put one BalanceLow on the bus", len(low) == 1, f"{got}")

        # The sample events through `cargo lambda invoke`, as a person would run them.
        # The served notify function, fed by the template's rule through the forwarder.
        def mails(subject: str) -> list:
            data = json.load(urllib.request.urlopen(f"{moto}/moto-api/data.json"))
            return [m for m in data.get("ses", {}).get("Message", [])
                    if m["destinations"].get("ToAddresses") == ["ops@example.com"] and m["subject"] == subject]

        def exactly_one(subject: str) -> int:
            deadline = time.time() + 60
            while time.time() < deadline and not mails(subject):
                time.sleep(0.5)
            time.sleep(3)  # a duplicate would have arrived by now
            return len(mails(subject))

        n = exactly_one("Your credit balance is low")
        checks.check("the served debit's BalanceLow emailed the billing contact exactly once (rule → notify)", n == 1, f"{n} mails")
        s, b = http("POST", f"{api}/v1/accounts/e2e/usage", svc,
                    {"consumable": "api_calls", "quantity": 4_400, "idempotency_key": "u-zero"})
        checks.check("POST usage to zero → 200, balance 0", s == 200 and b.get("balance") == 0, f"{s} {b}")
        n = exactly_one("You're out of credits")
        checks.check("reaching zero emailed credit_balance_depleted exactly once", n == 1, f"{n} mails")
        s, b = http("GET", f"{api}/v1/accounts/e2e/notifications", owner)
        kinds = [x.get("type") for x in (b or {}).get("notifications", [])]
        checks.check("GET notifications lists both, newest first",
                     s == 200 and kinds == ["credit_balance_depleted", "credit_balance_low"], f"{s} {b}")

        # Buying credits end to end: the served purchase function opens a Checkout Session,
        # localstripe plays the customer and sends its signed events to the served webhook.
        def purchase_status(pid: str, want: str) -> dict:
            deadline, b = time.time() + 30, {}
            while time.time() < deadline:
                _, b = http("GET", f"{api}/v1/accounts/e2e/credits/purchases/{pid}", owner)
                if b.get("status") == want:
                    break
                time.sleep(0.5)
            return b

        def buy(key: str, amount: int) -> dict:
            s, b = http("POST", f"{api}/v1/accounts/e2e/credits/purchases", owner, {"amount": amount},
                        {"idempotency-key": key})
            checks.check(f"POST purchases ${amount / 100:.2f} → 201 pending with a checkout url",
                         s == 201 and b.get("status") == "pending" and str(b.get("url", "")).startswith(stripe), f"{s} {b}")
            return b or {}

        def customer(session: str, path: str, form: dict) -> int:
            req = urllib.request.Request(f"{stripe}/_config/checkout/sessions/{session}/{path}",
                                         data=urllib.parse.urlencode(form).encode())
            try:
                return urllib.request.urlopen(req, timeout=10).status
            except urllib.error.HTTPError as e:
                return e.code

        card = buy("e2e-card", 2000)
        checks.check("the customer pays by card", customer(card.get("checkout_session_id", "x"), "pay", {}) == 200)
        b = purchase_status(card.get("purchase_id", "x"), "succeeded")
        checks.check("webhook credited it: status succeeded, balance $20.00",
                     b.get("status") == "succeeded" and b.get("balance") == 20_000_000, f"{b}")
        # rules §20: Checkout's invoice.paid reaches the webhook too; its hosted page is the receipt.
        deadline = time.time() + 30
        while time.time() < deadline and not b.get("receipt_url"):
            time.sleep(0.5)
            _, b = http("GET", f"{api}/v1/accounts/e2e/credits/purchases/{card.get('purchase_id', 'x')}", owner)
        checks.check("the purchase's receipt: invoice.paid kept its hosted invoice, $20.00 with no tax",
                     str(b.get("receipt_url", "")).startswith(f"{stripe}/_config/invoices/in_")
                     and (b.get("subtotal"), b.get("tax"), b.get("total")) == (2000, 0, 2000), f"{b}")
        s, b = http("GET", f"{api}/v1/accounts/e2e/credits", owner)
        top = (b.get("recent_transactions") or [{}])[0]
        checks.check("the credits view shows the purchase entry",
                     top.get("kind") == "purchase" and top.get("amount") == 20_000_000, f"{top}")
        bank = buy("e2e-bank", 1500)
        checks.check("the customer pays by bank debit",
                     customer(bank.get("checkout_session_id", "x"), "pay", {"delayed": "true"}) == 200)
        b = purchase_status(bank.get("purchase_id", "x"), "processing")
        checks.check("status processing with the seed's message",
                     b.get("message") == "Your payment is processing. We'll email you when it completes.", f"{b}")
        customer(bank.get("checkout_session_id", "x"), "settle", {"outcome": "failed"})
        b = purchase_status(bank.get("purchase_id", "x"), "failed")
        checks.check("the debit fails: status failed with the seed's message, nothing credited",
                     b.get("message") == "We couldn't confirm your payment. Please try again.", f"{b}")
        n = exactly_one("Your credit purchase failed")
        checks.check("the failure emailed the billing contact exactly once (webhook → bus → notify)", n == 1, f"{n} mails")
        s, b = http("GET", f"{api}/v1/accounts/e2e/credits", owner)
        checks.check("balance still $20.00", b.get("balance") == 20_000_000, f"{b.get('balance')}")

        # Saving a card, then a debit that triggers a recharge: SetupIntent → the browser's
        # confirm (here, localstripe's API) → setup_intent.succeeded → the card; then usage
        # crosses the threshold → BalanceLow → the template's rule → auto-recharge → credited.
        s, b = http("POST", f"{api}/v1/accounts/e2e/payment-method/setup", owner, {})
        checks.check("POST payment-method/setup → 201 with a client_secret", s == 201 and b.get("client_secret"), f"{s} {b}")
        confirm = urllib.parse.urlencode({
            "payment_method_data[type]": "card", "payment_method_data[card][number]": "4242424242424242",
            "payment_method_data[card][exp_month]": "12", "payment_method_data[card][exp_year]": "2030",
            "payment_method_data[card][cvc]": "123"}).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"{stripe}/v1/setup_intents/{(b or {}).get('setup_intent_id', 'x')}/confirm", data=confirm,
            headers={"Authorization": "Bearer sk_test_local"}), timeout=10).read()

        def view_until(ok, timeout: float = 30) -> dict:
            deadline, v = time.time() + timeout, {}
            while time.time() < deadline:
                _, v = http("GET", f"{api}/v1/accounts/e2e/credits", owner)
                if ok(v):
                    break
                time.sleep(0.5)
            return v

        v = view_until(lambda v: v.get("payment_method"))
        checks.check("setup_intent.succeeded saved the card: visa 4242",
                     (v.get("payment_method") or {}).get("last4") == "4242", f"{v.get('payment_method')}")
        s, b = http("PUT", f"{api}/v1/accounts/e2e/credits/auto-recharge", owner,
                    {"enabled": True, "threshold": 5_000_000, "amount": 10_000_000})
        checks.check("PUT auto-recharge on ($5 threshold, $10) → 200", s == 200, f"{s} {b}")
        s, b = http("POST", f"{api}/v1/accounts/e2e/usage", svc,
                    {"consumable": "api_calls", "quantity": 16_000, "idempotency_key": "u-recharge"})
        checks.check("POST usage takes $20 to $4 → 200", s == 200 and b.get("balance") == 4_000_000, f"{s} {b}")
        v = view_until(lambda v: v.get("balance") == 14_000_000)
        top = (v.get("recent_transactions") or [{}])[0]
        checks.check("the debit triggered one auto-recharge: balance $14.00, entry auto_recharge",
                     v.get("balance") == 14_000_000 and top.get("kind") == "auto_recharge"
                     and (v.get("auto_recharge") or {}).get("used_this_month") == 1, f"{v.get('balance')} {top}")
        n = exactly_one("We added $10.00 to your balance")
        checks.check("the recharge emailed credit_auto_recharge_triggered exactly once", n == 1, f"{n} mails")

        # rules §20: the recharge's AutoRechargeSucceeded → the template's rule → auto-recharge,
        # which invoices it, paid by its own PaymentIntent; the list shows both, newest first.
        deadline, b = time.time() + 30, {}
        while time.time() < deadline:
            _, b = http("GET", f"{api}/v1/accounts/e2e/credits/purchases", owner)
            if any(p.get("kind") == "auto_recharge" and p.get("receipt_url") for p in (b or {}).get("purchases", [])):
                break
            time.sleep(0.5)
        items = (b or {}).get("purchases", [])
        rch = next((p for p in items if p.get("kind") == "auto_recharge"), {})
        paid_card = next((p for p in items if p.get("purchase_id") == card.get("purchase_id")), {})
        checks.check("GET purchases: the recharge, invoiced with its receipt, first; the card purchase with its receipt",
                     bool(items) and items[0].get("kind") == "auto_recharge" and rch.get("total") == 1000
                     and bool(rch.get("receipt_url")) and paid_card.get("status") == "succeeded"
                     and bool(paid_card.get("receipt_url")) and b.get("next_cursor") is None, f"{b}")

        # Reconciliation of the account that bought, was refused, saved a card and recharged:
        # every paid payment credited once, the ledger adds up. The command, as an operator runs it.
        out = subprocess.run(["cargo", "run", "-q", "-p", "reconcile", "--bin", "topup-reconcile", "--", "e2e"],
                             cwd=stack_api.ROOT, env=env, capture_output=True, text=True, timeout=300)
        try:
            report = json.loads(out.stdout.splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            report = {}
        checks.check("topup-reconcile e2e: Stripe and the ledger agree (exit 0, no differences)",
                     out.returncode == 0 and report.get("differences") == [] and report.get("credited_payments", 0) >= 2,
                     f"exit {out.returncode} {out.stdout[-400:]} {out.stderr[-400:]}")

        # The billing page of this profile (free-form amounts) in headless Chromium.
        sys.path.insert(0, str(stack_api.ROOT / "tests" / "browser"))
        import billing_test
        try:
            billing_test.run_amount(api, "e2e", owner, checks, stack_api.ROOT / ".local" / "screenshots")
        except Exception as e:
            checks.check("browser (usd-overage) ran to the end", False, repr(e))

        webhooks_out(api, svc, checks, stack_api, moto, watch_port)

        # The contract: schemathesis generates requests from infra/openapi.yaml (valid and not)
        # against the served API; no 5xx, no status or body outside the document.
        s, b = http("PUT", f"{api}/v1/accounts/fuzz", svc, {"plan": "pro", "billing_contacts": [{"email": "fuzz@example.com"}]})
        seed = os.environ.get("TOPUP_FUZZ_SEED", "20261122")
        fuzz = subprocess.run(
            [str(stack_api.ROOT / ".venv" / "st" / "bin" / "st"), "--config-file", "tests/contract/schemathesis.toml", "run",
             "infra/openapi.yaml", "--url", api, "-H", f"Authorization: Bearer {svc}", "--checks", "all",
             "--exclude-checks", "positive_data_acceptance", "-n", os.environ.get("TOPUP_FUZZ_EXAMPLES", "20"),
             "--seed", seed, "--phases", "examples,coverage,fuzzing", "--request-timeout", "40", "--no-color"],
            cwd=stack_api.ROOT, env=dict(os.environ, SCHEMATHESIS_HOOKS=""), capture_output=True, text=True)
        (stack_api.LOGS / "schemathesis.log").write_text(fuzz.stdout + fuzz.stderr)
        summary = [l for l in fuzz.stdout.splitlines() if "generated" in l or "failures" in l.lower()][-2:]
        checks.check(f"schemathesis against infra/openapi.yaml (seed {seed}): no 5xx, nothing undocumented",
                     s in (200, 201) and fuzz.returncode == 0, f"{summary}; see {stack_api.LOGS / 'schemathesis.log'}")

        manifest = json.loads((stack_api.ROOT / "events/expected.json").read_text())
        for file, expected in manifest:
            fn = ("webhooks-out" if file.startswith("webhooks-out-")
                  else file.split("-")[0] if file.startswith(("debit-", "notify-", "purchase-", "webhook-", "reconcile-"))
                  else "credits-api")
            out = subprocess.run(["cargo", "lambda", "invoke", fn, "--data-file", f"events/{file}",
                                  "--invoke-address", "127.0.0.1", "--invoke-port", str(watch_port)],
                                 cwd=stack_api.ROOT, env=env, capture_output=True, text=True, timeout=120)
            try:
                reply = json.loads(out.stdout)
                # An HTTP function answers a status; an event function's success stands for 200.
                status = reply.get("statusCode", 200 if out.returncode == 0 and fn in ("notify", "reconcile", "webhooks-out") else None)
            except json.JSONDecodeError:
                status = None
            checks.check(f"cargo lambda invoke {fn} --data-file events/{file} → {expected}",
                         status == expected, f"{status} {out.stdout[:300]} {out.stderr[-300:]}")

        batch_usage(api, svc, checks)
        lanes(api, svc, checks)
        entities(api, svc, checks, stack_api, secret, moto)
        failure_queue_and_redrive(api, moto, secret, checks, stack_api, r, ses, kw, watch_port)
        crowd(api, svc, checks)
        r.shutdown()
    finally:
        stack.stop()
        if ses:
            ses.close()


class SesGate:
    """SES v2 for the served functions (`AWS_ENDPOINT_URL_SESV2`): passes each request to moto,
    or, while `throttling` is set, answers as SES does when the sending rate is exceeded (429
    TooManyRequestsException), a failure notify retries. A thread of this process; `close`
    stops it."""

    def __init__(self, moto: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        gate = self
        self.moto = moto
        self.throttling = threading.Event()
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                gate.requests += 1
                if gate.throttling.is_set():
                    status, payload = 429, json.dumps({"message": "Maximum sending rate exceeded."}).encode()
                    headers = {"content-type": "application/json", "x-amzn-errortype": "TooManyRequestsException"}
                else:
                    req = urllib.request.Request(gate.moto + self.path, data=body or None, method=self.command)
                    for k, v in self.headers.items():
                        if k.lower() not in ("host", "content-length", "connection", "transfer-encoding", "expect"):
                            req.add_header(k, v)
                    try:
                        with urllib.request.urlopen(req, timeout=30) as r:
                            status, headers, payload = r.status, dict(r.headers), r.read()
                    except urllib.error.HTTPError as e:
                        status, headers, payload = e.code, dict(e.headers), e.read()
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next scripted status (200
    once the script is done) and keeps the signature header and raw body of each."""

    def __init__(self, script: list[int]) -> None:
        import http.server

        self.script = list(script)
        self.got: list[tuple[str, bytes]] = []
        self.at: list[float] = []
        self.lock = threading.Lock()
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with me.lock:
                    me.got.append((self.headers.get("topup-signature", ""), body))
                    me.at.append(time.monotonic())
                    status = me.script.pop(0) if me.script else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/topup"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(b) for _, b in self.got]

    def wait(self, n: int, timeout: float) -> list[dict]:
        end = time.time() + timeout
        while time.time() < end and len(self.got) < n:
            time.sleep(0.2)
        return self.bodies()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def readme_verify(root):
    """The receiver example of docs/api.md, run as a receiver would run it."""
    text = (root / "docs" / "api.md").read_text()
    block = text.split("<!-- verify-webhook:start -->", 1)[1].split("<!-- verify-webhook:end -->", 1)[0]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/api.md (verify-webhook)", "exec"), scope)
    return scope["verify"]


def webhooks_out(api: str, svc: str, checks: Checks, stack_api, moto: str, watch_port: int) -> None:
    """Webhooks out through the served stack: endpoints registered through the router, events
    from the bus (the template's rule → webhooks-out), retries from the SQS queue with real
    delays (the template's SQS source, honoured by scripts/wiring.py), every delivery verified
    with docs/api.md's example."""
    verify = readme_verify(stack_api.ROOT)
    s, b = http("POST", f"{api}/v1/webhook-endpoints", svc, {"url": "https://10.0.0.7/hook", "events": ["*"]})
    checks.check("a private-address webhook URL → 422 invalid_url", s == 422 and b["error"]["code"] == "invalid_url", f"{s} {b}")
    s, b = http("POST", f"{api}/v1/webhook-endpoints", svc, {"url": "https://169.254.169.254/latest", "events": ["*"]})
    checks.check("a link-local webhook URL → 422 invalid_url", s == 422 and b["error"]["code"] == "invalid_url", f"{s} {b}")

    alerts, flaky = Receiver([]), Receiver([500, 500, 500])
    made = []
    try:
        s, a = http("POST", f"{api}/v1/webhook-endpoints", svc, {"url": alerts.url, "events": ["balance.alert"]})
        s2, f = http("POST", f"{api}/v1/webhook-endpoints", svc, {"url": flaky.url, "events": ["balance.low"]})
        checks.check("POST /v1/webhook-endpoints (loopback, allowed by the local stack's configuration) → 201 with the secret",
                     s == 201 and s2 == 201 and str(a.get("secret", "")).startswith("whsec_"), f"{s} {a} {s2} {f}")
        if s != 201 or s2 != 201:
            return
        made = [a["id"], f["id"]]
        # $20 → $4: crosses the $15 and $10 alerts and the $5 low-balance threshold.
        http("PUT", f"{api}/v1/accounts/e2e-hooks", svc, {"plan": "free", "billing_contacts": []})
        http("POST", f"{api}/v1/accounts/e2e-hooks/usage", svc, {"consumable": "api_calls", "quantity": 1000, "idempotency_key": "h0"})
        http("POST", f"{api}/v1/accounts/e2e-hooks/credits/adjustments", svc,
             {"amount": 20_000_000, "reason": "hooks grant", "idempotency_key": "hg1"})
        s, _ = http("PUT", f"{api}/v1/accounts/e2e-hooks/credits/alerts", svc, {"thresholds": [15_000_000, 10_000_000]})
        s2, d = http("POST", f"{api}/v1/accounts/e2e-hooks/usage", svc,
                     {"consumable": "api_calls", "quantity": 16_000, "idempotency_key": "h1"})
        checks.check("a debit from $20 to $4 → 200", s == 200 and s2 == 200, f"{s} {s2} {d}")

        got = alerts.wait(2, 30)
        time.sleep(3)  # anything more would be a duplicate
        got = alerts.bodies()
        thresholds = sorted(b["data"].get("threshold") for b in got)
        checks.check("the debit crossing two alert thresholds delivers each balance.alert once to the receiver",
                     thresholds == [10_000_000, 15_000_000] and all(b["type"] == "balance.alert" and b["account_id"] == "e2e-hooks"
                                                                    and b["data"].get("balance") == 4_000_000 for b in got),
                     f"{got}")
        checks.check("every alert delivery verifies with docs/api.md's example (and not with another secret)",
                     bool(alerts.got) and all(verify(a["secret"], sig, body) and not verify(f["secret"], sig, body)
                                              for sig, body in alerts.got), f"{alerts.got[:1]}")

        # The flaky receiver: 500, 500, 500, then 200, after 1 s, 2 s and 4 s (the local schedule).
        got = flaky.wait(4, 60)
        gaps = [round(b - a, 1) for a, b in zip(flaky.at, flaky.at[1:])]
        time.sleep(3)
        got = flaky.bodies()
        ids = {b["id"] for b in got}
        checks.check("a receiver answering 500 three times then 200 gets balance.low four times, with one id and body",
                     len(got) == 4 and len(ids) == 1 and got[0]["type"] == "balance.low"
                     and len({body for _, body in flaky.got}) == 1, f"{len(got)} deliveries, gaps {gaps} s: {got}")
        checks.check("its retries waited for the schedule's delays (1, 2 and 4 s apart)",
                     len(gaps) >= 3 and all(g >= want - 0.1 for g, want in zip(gaps, [1, 2, 4])), f"gaps {gaps} s")
        checks.check("every retry verifies with docs/api.md's example",
                     all(verify(f["secret"], sig, body) for sig, body in flaky.got), f"{flaky.got[:1]}")
        s, page = http("GET", f"{api}/v1/webhook-endpoints/{f['id']}/deliveries", svc)
        rec = (page or {}).get("deliveries", [{}])[0] if s == 200 and page.get("deliveries") else {}
        checks.check("GET …/deliveries shows it succeeded on attempt 4, last answer 200",
                     (rec.get("status"), rec.get("attempts"), rec.get("last_response_code"), rec.get("event_id"))
                     == ("succeeded", 4, 200, next(iter(ids), None)), f"{s} {page}")
        if rec.get("id"):
            s, r = http("POST", f"{api}/v1/webhook-endpoints/{f['id']}/deliveries/{rec['id']}/redeliver", svc, {})
            again = flaky.wait(5, 30)
            checks.check("a manual redelivery → 202, and the receiver gets the same event id once more",
                         s == 202 and len(again) == 5 and again[4]["id"] == rec.get("event_id"), f"{s} {r} {len(again)}")
            # A follow-up in the retry queue's dead letters (webhooks-out failed on it five
            # times): scripts/redrive hands it back in the SQS shape; this one is stale (the
            # delivery succeeded), so it is done without sending anything again.
            import boto3
            sqs = boto3.client("sqs", endpoint_url=moto, region_name=stack_api.REGION, aws_access_key_id="test",
                               aws_secret_access_key="test")
            dlq = sqs.get_queue_url(QueueName="topup-WebhookRetryDeadLetters")["QueueUrl"]
            sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps(
                {"endpoint_id": f["id"], "delivery_id": rec["id"], "attempt": 1}))
            out = subprocess.run([str(stack_api.ROOT / "scripts" / "redrive"), "--queue", "topup-WebhookRetryDeadLetters",
                                  "--endpoint-url", moto, "--lambda-endpoint-url", f"http://127.0.0.1:{watch_port}"],
                                 cwd=stack_api.ROOT, capture_output=True, text=True, timeout=300)
            checks.check("scripts/redrive hands a dead-lettered follow-up back to webhooks-out: redriven 1, nothing resent",
                         out.returncode == 0 and "redriven 1, failed 0, left 0" in out.stdout and len(flaky.bodies()) == 5,
                         f"{out.stdout[-400:]} {out.stderr[-300:]}")
    finally:
        for i in made:
            http("DELETE", f"{api}/v1/webhook-endpoints/{i}", svc)
        alerts.close()
        flaky.close()


def batch_usage(api, svc, checks):
    """`POST …/usage/batch` through the router: each event answered on its own, and the same
    batch again replays every applied event without moving the balance."""
    s, b = http("PUT", f"{api}/v1/accounts/e2e-batch", svc, {"plan": "free", "billing_contacts": []})
    http("POST", f"{api}/v1/accounts/e2e-batch/credits/adjustments", svc,
         {"amount": 20_000_000, "reason": "batch grant", "idempotency_key": "bg1"})
    events = [{"consumable": "api_calls", "quantity": 1_000, "idempotency_key": "e1"},
              {"consumable": "api_calls", "quantity": 500, "idempotency_key": "e2"},
              {"consumable": "no_such", "quantity": 1, "idempotency_key": "e3"},
              {"consumable": "api_calls", "quantity": 500, "idempotency_key": "e2"}]
    s, b = http("POST", f"{api}/v1/accounts/e2e-batch/usage/batch", svc, {"events": events})
    got = [(r.get("status"), r.get("replayed")) for r in (b or {}).get("results", [])]
    checks.check("POST usage/batch → 200 with a result per event (allowance, credits, 422, replay)",
                 s == 200 and got == [(200, False), (200, False), (422, False), (200, True)]
                 and b["results"][1].get("balance") == 19_500_000, f"{s} {b}")
    s, again = http("POST", f"{api}/v1/accounts/e2e-batch/usage/batch", svc, {"events": events})
    got = [(r.get("status"), r.get("replayed")) for r in (again or {}).get("results", [])]
    s2, v = http("GET", f"{api}/v1/accounts/e2e-batch/credits", svc)
    checks.check("the same batch again replays every applied event; the balance stays $19.50",
                 s == 200 and got == [(200, True), (200, True), (422, False), (200, True)]
                 and (v or {}).get("balance") == 19_500_000, f"{s} {again} {v}")


def lanes(api, svc, checks):
    """`PUT …/lanes` through the router and the template's route: a hot account on four lanes
    takes batches and single debits, the view and the ledger page show the whole balance, and
    one lane again brings every lane's credits home."""
    acct = f"{api}/v1/accounts/e2e-lanes"
    http("PUT", acct, svc, {"plan": "free", "billing_contacts": []})
    http("POST", f"{acct}/credits/adjustments", svc, {"amount": 20_000_000, "reason": "lanes grant", "idempotency_key": "lg1"})
    http("POST", f"{acct}/usage", svc, {"consumable": "api_calls", "quantity": 1_000, "idempotency_key": "l-allowance"})
    s, b = http("PUT", f"{acct}/lanes", svc, {"lanes": 4})
    checks.check("PUT lanes → 200 {lanes: 4, min: 4, max: 4, automatic: false, floor: $5}",
                 s == 200 and b == {"lanes": 4, "min": 4, "max": 4, "automatic": False, "floor": 5_000_000}, f"{s} {b}")
    s, bad = http("PUT", f"{acct}/lanes", svc, {"lanes": 65})
    checks.check("PUT lanes 65 → 422 invalid_lanes", s == 422 and (bad or {}).get("error", {}).get("code") == "invalid_lanes",
                 f"{s} {bad}")
    events = [{"consumable": "api_calls", "quantity": 10, "idempotency_key": f"le{i}"} for i in range(60)]
    statuses = []
    for chunk in (events[:30], events[30:]):
        s, b = http("POST", f"{acct}/usage/batch", svc, {"events": chunk})
        statuses += [r.get("status") for r in (b or {}).get("results", [])]
    for i in range(10):
        s, _ = http("POST", f"{acct}/usage", svc, {"consumable": "api_calls", "quantity": 10, "idempotency_key": f"ls{i}"})
        statuses.append(s)
    want = 20_000_000 - 70 * 10_000
    s, v = http("GET", f"{acct}/credits", svc)
    s2, page = http("GET", f"{acct}/credits/transactions?limit=5", svc)
    kinds = {t.get("kind") for t in (page or {}).get("transactions", [])}
    top = ((page or {}).get("transactions") or [{}])[0].get("balance_after")
    checks.check("70 debits on lanes: every one applied; the view and the page's newest entry say the whole balance",
                 statuses == [200] * 70 and (v or {}).get("balance") == want and top == want, f"{statuses} {v} {page}")
    # Lanes are ours (rules §16): the customer's pages show no lease entries, and their running
    # balances of the whole account add up entry by entry (newest first).
    s, full = http("GET", f"{acct}/credits/transactions?limit=100", svc)
    txs = (full or {}).get("transactions", [])
    adds_up = all(txs[i]["balance_after"] == txs[i + 1]["balance_after"] + txs[i]["amount"] for i in range(len(txs) - 1))
    checks.check("lanes are invisible: no lease entries on the page, running balances that add up",
                 len(txs) >= 70 and not (kinds | {t.get("kind") for t in txs}) & {"lease_out", "lease_in", "lease_return"}
                 and adds_up, f"{full}")
    s, b = http("PUT", f"{acct}/lanes", svc, {"lanes": 1})
    s2, page = http("GET", f"{acct}/credits/transactions?limit=3", svc)
    s3, v = http("GET", f"{acct}/credits", svc)
    first = ((page or {}).get("transactions") or [{}])[0]
    checks.check("lanes 1 → every lane's credits home, the whole balance unchanged",
                 s == 200 and first.get("balance_after") == want and (v or {}).get("balance") == want,
                 f"{s} {b} {page} {v}")
    # Bounds instead of a count (rules §21): the account spreads itself within them.
    s, b = http("PUT", f"{acct}/lanes", svc, {"min": 1, "max": 8})
    checks.check("PUT lanes {min: 1, max: 8} → 200, automatic within the bounds",
                 s == 200 and (b or {}).get("automatic") is True and (b or {}).get("min") == 1 and (b or {}).get("max") == 8,
                 f"{s} {b}")
    s, bad = http("PUT", f"{acct}/lanes", svc, {"lanes": None, "min": 1, "max": 1})
    checks.check("PUT lanes {lanes: null, …} → 400 invalid_request, nothing changed",
                 s == 400 and (bad or {}).get("error", {}).get("code") == "invalid_request", f"{s} {bad}")


def entities(api: str, svc: str, checks: Checks, stack_api, secret: str, moto: str) -> None:
    """Budgets for members, projects and keys (rules §17) through the router: an owner sets a
    limit, usage naming the entity spends it, the debit past it is 402 with the entity and what
    remains, the check says so, the list and the page's filter show it, the CSV has the column,
    and reaching 80 % and 100 % emails the billing contact once each."""
    acct = f"{api}/v1/accounts/e2e-ent"
    s, _ = http("PUT", acct, svc, {"plan": "free", "billing_contacts": [{"email": "budgets@example.com"}]})
    checks.check("PUT /v1/accounts/e2e-ent → 201", s == 201, f"{s}")
    http("POST", f"{acct}/usage", svc, {"consumable": "api_calls", "quantity": 1_000, "idempotency_key": "ent-allowance"})
    http("POST", f"{acct}/credits/adjustments", svc, {"amount": 50_000_000, "reason": "e2e", "idempotency_key": "ent-g"})
    owner = stack_api.token_for("owner", "e2e-ent", secret)
    s, b = http("PUT", f"{acct}/entities/user:ann@acme.example", owner, {"monthly_limit": 5_000_000, "name": "Ann"})
    checks.check("PUT …/entities/user:ann@acme.example (owner) → 200 with the limit and nothing spent",
                 s == 200 and b == {"entity": "user:ann@acme.example", "name": "Ann", "monthly_limit": 5_000_000,
                                     "spent_this_month": 0, "remaining_this_month": 5_000_000}, f"{s} {b}")
    use = lambda q, k: http("POST", f"{acct}/usage", svc, {"consumable": "api_calls", "quantity": q,
                                                             "idempotency_key": k, "entity": "user:ann@acme.example"})
    statuses = [use(4_000, "ent-1")[0], use(500, "ent-2")[0]]
    s, refused = use(1_000, "ent-3")
    checks.check("usage past the entity's limit → 402 entity_budget_exceeded with the entity and what remains",
                 statuses == [200, 200] and s == 402 and refused.get("error", {}).get("code") == "entity_budget_exceeded"
                 and refused.get("entity") == "user:ann@acme.example" and refused.get("remaining_this_month") == 500_000,
                 f"{statuses} {s} {refused}")
    s, c = http("GET", f"{acct}/credits/check?consumable=api_calls&quantity=1000&entity=user:ann@acme.example", svc)
    checks.check("the check answers entity_budget_exceeded", s == 200 and c.get("reason") == "entity_budget_exceeded", f"{s} {c}")
    s, _ = use(500, "ent-4")
    s2, lst = http("GET", f"{acct}/entities", owner)
    ann = [e for e in (lst or {}).get("entities", []) if e.get("entity") == "user:ann@acme.example"]
    checks.check("the rest of the month's budget is taken exactly; the list shows it spent",
                 s == 200 and s2 == 200 and ann and ann[0]["spent_this_month"] == 5_000_000
                 and ann[0]["remaining_this_month"] == 0, f"{s} {s2} {lst}")
    s, page = http("GET", f"{acct}/credits/transactions?entity=user:ann@acme.example", svc)
    txs = (page or {}).get("transactions", [])
    checks.check("?entity= shows only its entries", s == 200 and [t["amount"] for t in txs] == [-500_000, -500_000, -4_000_000]
                 and all(t.get("entity") == "user:ann@acme.example" for t in txs), f"{s} {page}")
    req = urllib.request.Request(f"{acct}/credits/transactions.csv", headers={"authorization": f"Bearer {svc}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        csv = r.read().decode()
    checks.check("the CSV has the entity column", csv.startswith("id,kind,amount,balance_after,created_at,description,entity\n")
                 and csv.count(",user:ann@acme.example\n") == 3, csv[:300])

    def budget_mails() -> list:
        data = json.load(urllib.request.urlopen(f"{moto}/moto-api/data.json"))
        return sorted(m["subject"] for m in data.get("ses", {}).get("Message", [])
                      if m["destinations"].get("ToAddresses") == ["budgets@example.com"] and "budget" in m["subject"])
    want = ["user:ann@acme.example has used 100% of its monthly budget", "user:ann@acme.example has used 80% of its monthly budget"]
    deadline = time.time() + 60
    while time.time() < deadline and len(budget_mails()) < 2:
        time.sleep(0.5)
    time.sleep(2)  # a duplicate would have arrived by now
    got = budget_mails()
    checks.check("80 % and 100 % of the budget emailed to the billing contact once each", got == want, f"{got}")


def failure_queue_and_redrive(api: str, moto: str, secret: str, checks: Checks, stack_api, r, ses: SesGate,
                              kw: dict, watch_port: int) -> None:
    """A BalanceLow whose email SES throttles for longer than notify's retries (the template's
    EventInvokeConfig: 1 + 2 attempts, honoured by scripts/wiring.py) lands in notify's failure
    queue as Lambda's destination record; once SES is back, `scripts/redrive` invokes notify
    with it and the email goes out, once."""
    import boto3

    svc = stack_api.token_for("service", None, secret)
    owner = stack_api.token_for("owner", "e2e-dlq", secret)
    s, b = http("PUT", f"{api}/v1/accounts/e2e-dlq", svc, {"plan": "free", "billing_contacts": [{"email": "dlq@example.com"}]})
    checks.check("PUT /v1/accounts/e2e-dlq → 201", s == 201, f"{s} {b}")
    url = r.forwarder.failure_queues.get("notify")
    checks.check("the local wiring made notify's failure queue from the template", bool(url), f"{r.forwarder.failure_queues}")
    if not url:
        return
    sqs = boto3.client("sqs", **kw)

    def depth(q: str) -> int:
        a = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["ApproximateNumberOfMessages",
                                                                  "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

    def mails() -> int:
        data = json.load(urllib.request.urlopen(f"{moto}/moto-api/data.json"))
        return len([m for m in data.get("ses", {}).get("Message", [])
                    if m["destinations"].get("ToAddresses") == ["dlq@example.com"]])

    now_ms = int(time.time() * 1000)
    event_id = f"evt_e2e_dlq_{now_ms}"
    detail = {"event_id": event_id, "account_id": "e2e-dlq", "occurred_ms": now_ms,
              "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now_ms / 1000)),
              "balance": 4_500_000, "previous_balance": 6_000_000, "threshold": 5_000_000, "plan": "free",
              "auto_recharge_enabled": False, "cause": "usage", "kind": "BalanceLow", "version": 2}
    start = depth(url)
    ses.throttling.set()
    started = time.time()
    try:
        boto3.client("events", **kw).put_events(Entries=[{"Source": "topup", "DetailType": "BalanceLow",
                                                          "Detail": json.dumps(detail), "EventBusName": "topup"}])
        while time.time() - started < 60 and depth(url) == start:
            time.sleep(0.5)
    finally:
        ses.throttling.clear()
    took = time.time() - started
    records = []
    for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", []):
        rec = json.loads(m["Body"])
        if (rec.get("requestPayload") or {}).get("detail", {}).get("event_id") == event_id:
            records.append(rec)
    rec = records[0] if records else {}
    ctx = rec.get("requestContext") or {}
    checks.check(f"SES throttling past notify's 3 attempts put its destination record in {url.rsplit('/', 1)[-1]} ({took:.0f}s)",
                 len(records) == 1 and ctx.get("condition") == "RetriesExhausted"
                 and ctx.get("approximateInvokeCount") == 3 and ctx.get("functionArn", "").endswith(":function:notify")
                 and (rec.get("responseContext") or {}).get("functionError") == "Unhandled"
                 and rec["requestPayload"].get("detail-type") == "BalanceLow",
                 f"{records} (SES requests through the gate: {ses.requests})")
    rule_queues = [q for binary, q in r.forwarder.queues if binary == "notify"]
    checks.check("the event left the rule's queue and no email went out",
                 all(depth(q) == 0 for q in rule_queues) and mails() == 0,
                 f"rule queues {[depth(q) for q in rule_queues]}, mails {mails()}")

    redrive = [str(stack_api.ROOT / "scripts" / "redrive"), "--queue", url.rsplit("/", 1)[-1], "--endpoint-url", moto,
               "--lambda-endpoint-url", f"http://127.0.0.1:{watch_port}"]
    dry = subprocess.run(redrive + ["--dry-run"], cwd=stack_api.ROOT, capture_output=True, text=True, timeout=120)
    checks.check("scripts/redrive --dry-run names the record and leaves it",
                 dry.returncode == 0 and "would redrive 1, failed 0, left 1" in dry.stdout and depth(url) == 1,
                 f"exit {dry.returncode} {dry.stdout[-400:]} {dry.stderr[-400:]}")
    out = subprocess.run(redrive, cwd=stack_api.ROOT, capture_output=True, text=True, timeout=300)
    checks.check("scripts/redrive invoked notify with it and deleted it: redriven 1, failed 0, left 0",
                 out.returncode == 0 and "redriven 1, failed 0, left 0" in out.stdout and depth(url) == 0,
                 f"exit {out.returncode} {out.stdout[-400:]} {out.stderr[-400:]}")
    s, b = http("GET", f"{api}/v1/accounts/e2e-dlq/notifications", owner)
    listed = [(n.get("type"), [c.get("status") for c in n.get("channels", [])]) for n in (b or {}).get("notifications", [])]
    checks.check("the redriven notification is listed as sent, and emailed once",
                 s == 200 and listed == [("credit_balance_low", ["sent"])] and mails() == 1,
                 f"{s} {listed} mails {mails()}")


def crowd(api: str, svc: str, checks: Checks, clients: int = 200) -> None:
    """200 clients at once on one account through the router, as a customer's load test would
    come through API Gateway: every request is answered (no refused or reset connection), each
    debit applies once, and the ledger adds up."""
    import socket
    import threading
    from concurrent.futures import ThreadPoolExecutor

    s, b = http("PUT", f"{api}/v1/accounts/crowd", svc, {"plan": "free", "billing_contacts": [{"email": "crowd@example.com"}]})
    s2, b2 = http("POST", f"{api}/v1/accounts/crowd/credits/adjustments", svc,
                  {"amount": 100_000_000, "reason": "crowd grant", "idempotency_key": "crowd-grant"})
    if s not in (200, 201) or s2 != 201:
        checks.check("crowd: account and grant", False, f"{s} {b} {s2} {b2}")
        return
    start = threading.Barrier(clients)

    def one(i: int):
        start.wait()
        try:
            return http("POST", f"{api}/v1/accounts/crowd/usage", svc,
                        {"consumable": "api_calls", "quantity": 100, "idempotency_key": f"crowd-{i}"})
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
            return None, repr(e)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(one, range(clients)))
    lost = [b for s, b in answers if s is None]
    statuses = sorted({s for s, _ in answers if s is not None})
    checks.check(f"crowd: {clients} concurrent clients on one account through the router, every one answered",
                 not lost, f"{len(lost)} refused or reset, e.g. {lost[:2]}")
    checks.check("crowd: every debit applied (200)", statuses == [200], f"statuses {statuses}")
    taken = sum(b.get("from_credits", 0) for s, b in answers if s == 200)
    try:
        s, v = http("GET", f"{api}/v1/accounts/crowd/credits", svc)
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
        s, v = None, {"error": repr(e)}
    checks.check("crowd: the balance is the grant less what the answers say was taken",
                 s == 200 and v.get("balance") == 100_000_000 - taken and v.get("lifetime_spent") == taken,
                 f"{s} balance {v.get('balance')} taken {taken}")


def browser_tests(moto: str, stripe: str, secret: str, checks: Checks, stack_api, only: str | None = None) -> None:
    """The billing page and the console in headless Chromium against a served voice-minutes stack
    (its own table and bus): blocks of minutes, a Free plan without auto-reload, and the console's
    pages and actions (rules §19). `only`: `billing` or `console`, to run one of them."""
    sys.path.insert(0, str(stack_api.ROOT / "tests" / "browser"))
    import billing_test
    import console_test

    stack = stack_api.Stack()
    try:
        stack_api.create_resources(moto, "topup-browser", "topup-browser", "example.com")
        env = stack_api.function_env(moto, "voice-minutes", "topup-browser", "topup-browser", secret, stripe)
        watch_port, api_port = stack_api.free_port(), stack_api.free_port()
        r = stack_api.start_functions(stack, env, watch_port, api_port, reload=False)
        stack_api.register_webhook(stripe, api_port)
        api = f"http://127.0.0.1:{api_port}"
        token_for = lambda role, acct: stack_api.token_for(role, acct, secret)  # noqa: E731
        shots = stack_api.ROOT / ".local" / "screenshots"
        if only in (None, "billing"):
            try:
                billing_test.run(api, moto, "topup-browser", token_for, http, checks, shots)
            except Exception as e:  # a scenario that could not even run is a failure, with its reason
                checks.check("browser tests ran to the end", False, repr(e))
        if only in (None, "console"):
            try:
                console_test.run(api, stripe, token_for, http, checks, shots)
            except Exception as e:
                checks.check("console browser tests ran to the end", False, repr(e))
        r.shutdown()
    finally:
        stack.stop()
