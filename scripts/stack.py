#!/usr/bin/env python3
"""topup's local stack, on 127.0.0.1 only, with no AWS account and no internet.

    serve   moto (DynamoDB, EventBridge, SES v2, SNS, SQS), localstripe, `cargo lambda watch`
            and an API router on :9000 that serves the template's routes; runs until Ctrl-C.
    test    every test: unit, handler and integration tests against the emulators, the
            template lint, and an end-to-end pass through `cargo lambda watch`, the router and
            `cargo lambda invoke` with the sample events. Starts and stops its own servers.
    bench   the benchmarks of BENCHMARKS.md.
    token   prints a local JWT (HS256, TOPUP_LOCAL_JWT_SECRET).

Run through ./scripts/dev, ./scripts/test, ./scripts/bench and ./scripts/token, which first
install the pinned tools into .venv (scripts/bootstrap).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
LOGS = ROOT / ".local" / "logs"
DEFAULT_SECRET = "topup-local-dev-secret-do-not-deploy"
# The local webhook endpoint's signing secret, shared by localstripe and the webhook function.
LOCAL_WEBHOOK_SECRET = "whsec_topup_local_stack_do_not_deploy"
REGION = "us-east-1"

sys.path.insert(0, str(ROOT / "scripts"))


def log(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, headers: dict | None = None) -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            urllib.request.urlopen(req, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up: {last}")


class Stack:
    """Processes this script started; each in its own process group, stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        LOGS.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        out = open(LOGS / f"{name}.log", "w")
        p = subprocess.Popen(cmd, cwd=ROOT, env=env or os.environ.copy(), stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append((name, p))
        log(f"started {name} (pid {p.pid}), log: {LOGS / (name + '.log')}")
        return p

    def stop(self) -> None:
        for name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            log(f"stopped {name} (pid {p.pid})")
        self.procs.clear()


def aws_env(endpoint: str) -> dict:
    env = os.environ.copy()
    env.update({
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_env(moto: str, stripe: str) -> dict:
    """The environment the integration tests and benches read the emulators' addresses from."""
    env = aws_env(moto)
    env["TOPUP_TEST_AWS_ENDPOINT"] = moto
    env["TOPUP_TEST_STRIPE_API_BASE"] = stripe
    return env


def start_emulators(stack: Stack, moto_port: int, stripe_port: int) -> tuple[str, str]:
    python = str(VENV_BIN / "python")
    stack.spawn("moto", [python, str(ROOT / "tests/support/moto_serial.py"), str(moto_port)])
    stack.spawn("localstripe", [python, str(ROOT / "tests/support/localstripe_local.py"), str(stripe_port)])
    moto = f"http://127.0.0.1:{moto_port}"
    stripe = f"http://127.0.0.1:{stripe_port}"
    wait_http(f"{moto}/moto-api/data.json")
    wait_http(f"{stripe}/v1/customers", headers={"Authorization": "Bearer sk_test_local"})
    return moto, stripe


def create_resources(endpoint: str, table: str, bus: str, sender_domain: str) -> None:
    """What the SAM template creates, made in the emulator: table (with TTL), bus, sender."""
    import boto3  # from the venv (moto depends on it)

    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
    ddb = boto3.client("dynamodb", **kw)
    try:
        ddb.create_table(
            TableName=table, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk", "gsi1pk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{
                "IndexName": "gsi1",
                "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"}, {"AttributeName": "pk", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }])
        ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"})
    except ddb.exceptions.ResourceInUseException:
        pass
    events = boto3.client("events", **kw)
    try:
        events.create_event_bus(Name=bus)
    except events.exceptions.ResourceAlreadyExistsException:
        pass
    ses = boto3.client("sesv2", **kw)
    if sender_domain not in [i["IdentityName"] for i in ses.list_email_identities().get("EmailIdentities", [])]:
        ses.create_email_identity(EmailIdentity=sender_domain)


def function_env(endpoint: str, profile: str, table: str, bus: str, secret: str, stripe: str) -> dict:
    env = aws_env(endpoint)
    env.update({
        "TOPUP_PROFILE": profile,
        "TOPUP_TABLE": table,
        "TOPUP_EVENT_BUS": bus,
        "TOPUP_LOCAL_JWT_SECRET": secret,
        # Your own test-mode key and https://api.stripe.com instead of localstripe, if you set them.
        "TOPUP_STRIPE_SECRET_KEY": env.get("TOPUP_STRIPE_SECRET_KEY", "sk_test_local_stack"),
        "TOPUP_STRIPE_API_BASE": env.get("TOPUP_STRIPE_API_BASE", stripe),
        "TOPUP_STRIPE_WEBHOOK_SECRET": env.get("TOPUP_STRIPE_WEBHOOK_SECRET", LOCAL_WEBHOOK_SECRET),
        # Hosted: the session's `url` is localstripe's test payment page, which a person can open.
        "TOPUP_CHECKOUT_UI": env.get("TOPUP_CHECKOUT_UI", "hosted"),
        "TOPUP_EMAIL_FROM": env.get("TOPUP_EMAIL_FROM", "billing@example.com"),
        "TOPUP_BILLING_URL": env.get("TOPUP_BILLING_URL", "http://localhost:3000/settings/billing"),
        "AWS_LAMBDA_LOG_LEVEL": env.get("AWS_LAMBDA_LOG_LEVEL", "info"),
    })
    return env


def start_functions(stack: Stack, env: dict, watch_port: int, api_port: int):
    import router  # needs PyYAML from the venv
    # Build first so the first request does not wait for a compile.
    subprocess.run(["cargo", "build", "--bins"], cwd=ROOT, env=env, check=True)
    stack.spawn("cargo-lambda-watch", ["cargo", "lambda", "watch", "--invoke-address", "127.0.0.1",
                                       "--invoke-port", str(watch_port)], env=env)
    wait_http(f"http://127.0.0.1:{watch_port}/")
    r = router.Router(ROOT / "infra/template.yaml", f"http://127.0.0.1:{watch_port}")
    r.serve("127.0.0.1", api_port)
    log(f"API router on http://127.0.0.1:{api_port} → cargo lambda watch :{watch_port}")
    import wiring
    forwarder = wiring.Forwarder(env["AWS_ENDPOINT_URL"], env["TOPUP_EVENT_BUS"], ROOT / "infra/template.yaml",
                                 f"http://127.0.0.1:{watch_port}", log)
    forwarder.start()
    r.forwarder = forwarder
    return r


def register_webhook(stripe: str, api_port: int) -> None:
    """Points localstripe's signed events at the served `POST /stripe/webhook` (through the
    router, as Stripe reaches API Gateway)."""
    form = urllib.parse.urlencode({"url": f"http://127.0.0.1:{api_port}/stripe/webhook",
                                   "secret": LOCAL_WEBHOOK_SECRET}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{stripe}/_config/webhooks/topup", data=form), timeout=10).read()


def sign(claims: dict, secret: str) -> str:
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def token_for(role: str, account: str | None, secret: str, hours: int = 12) -> str:
    claims = {"sub": f"local-{role}", "role": role, "exp": int(time.time()) + hours * 3600}
    if account:
        claims["account_id"] = account
    return sign(claims, secret)


# ---- serve --------------------------------------------------------------------------------

def serve(args) -> int:
    secret = os.environ.get("TOPUP_LOCAL_JWT_SECRET", DEFAULT_SECRET)
    stack = Stack()
    stopping = threading.Event()
    # Ctrl-C or a TERM stops everything this command started.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    try:
        moto, stripe = start_emulators(stack, args.moto_port, args.stripe_port)
        create_resources(moto, "topup", "topup", "example.com")
        env = function_env(moto, args.profile, "topup", "topup", secret, stripe)
        r = start_functions(stack, env, args.watch_port, args.port)
        register_webhook(stripe, args.port)
        svc = token_for("service", None, secret)
        print(f"""
topup is serving on http://127.0.0.1:{args.port} (profile {args.profile})
  moto (AWS)      {moto}   data: {moto}/moto-api/data.json
  localstripe     {stripe}
  functions       cargo lambda watch on :{args.watch_port}

Tokens (HS256 with TOPUP_LOCAL_JWT_SECRET):
  ./scripts/token service              # the product's backend
  ./scripts/token owner --account acme # a person on account acme

Try:
  T=$(./scripts/token service)
  curl -s -X PUT http://127.0.0.1:{args.port}/v1/accounts/acme -H "authorization: Bearer $T" \\
       -H 'content-type: application/json' -d '{{"plan":"free","billing_contacts":[{{"email":"you@example.com"}}]}}'
  curl -s -X POST http://127.0.0.1:{args.port}/v1/accounts/acme/credits/adjustments -H "authorization: Bearer $T" \\
       -H 'content-type: application/json' -d '{{"amount":10000000,"reason":"welcome","idempotency_key":"w1"}}'
  curl -s http://127.0.0.1:{args.port}/v1/accounts/acme/credits -H "authorization: Bearer $T"

Buy credits (localstripe plays Stripe; its signed events reach POST /stripe/webhook):
  O=$(./scripts/token owner --account acme)
  curl -s -X POST http://127.0.0.1:{args.port}/v1/accounts/acme/credits/purchases -H "authorization: Bearer $O" \
       -H 'content-type: application/json' -H 'idempotency-key: first-buy' -d '{{"amount":2000}}'
  # open the answer's "url" (a test payment page) and pay, or from a shell:
  curl -s -X POST {stripe}/_config/checkout/sessions/<checkout_session_id>/pay
  curl -s http://127.0.0.1:{args.port}/v1/accounts/acme/credits/purchases/<purchase_id> -H "authorization: Bearer $O"

Sent emails and SMS land in moto: {moto}/moto-api/data.json (ses.Message, sns.SMS).
Ctrl-C stops everything.
""", flush=True)
        del svc
        while not stopping.is_set():
            for name, p in stack.procs:
                if p.poll() is not None:
                    log(f"{name} exited with {p.returncode}; see {LOGS / (name + '.log')}")
                    return 1
            stopping.wait(1.0)
        r.shutdown()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


# ---- test ---------------------------------------------------------------------------------

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


def end_to_end(moto: str, stripe: str, secret: str, checks: Checks) -> None:
    import boto3

    stack = Stack()
    try:
        create_resources(moto, "topup", "topup", "example.com")
        kw = dict(endpoint_url=moto, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
        # Observe the bus as a consumer would: a rule with an SQS target.
        sqs = boto3.client("sqs", **kw)
        q = sqs.create_queue(QueueName="e2e-events")["QueueUrl"]
        ev = boto3.client("events", **kw)
        ev.put_rule(Name="e2e-all", EventBusName="topup", EventPattern=json.dumps({"source": ["topup"]}))
        ev.put_targets(Rule="e2e-all", EventBusName="topup",
                       Targets=[{"Id": "q", "Arn": "arn:aws:sqs:us-east-1:123456789012:e2e-events"}])

        env = function_env(moto, "usd-overage", "topup", "topup", secret, stripe)
        watch_port, api_port = free_port(), free_port()
        r = start_functions(stack, env, watch_port, api_port)
        register_webhook(stripe, api_port)
        api = f"http://127.0.0.1:{api_port}"
        svc = token_for("service", None, secret)
        owner = token_for("owner", "e2e", secret)

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

        # Reconciliation of the account that bought, was refused, saved a card and recharged:
        # every paid payment credited once, the ledger adds up. The command, as an operator runs it.
        out = subprocess.run(["cargo", "run", "-q", "-p", "reconcile", "--bin", "topup-reconcile", "--", "e2e"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        try:
            report = json.loads(out.stdout.splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            report = {}
        checks.check("topup-reconcile e2e: Stripe and the ledger agree (exit 0, no differences)",
                     out.returncode == 0 and report.get("differences") == [] and report.get("credited_payments", 0) >= 2,
                     f"exit {out.returncode} {out.stdout[-400:]} {out.stderr[-400:]}")

        # The billing page of this profile (free-form amounts) in headless Chromium.
        sys.path.insert(0, str(ROOT / "tests" / "browser"))
        import billing_test
        try:
            billing_test.run_amount(api, "e2e", owner, checks, ROOT / ".local" / "screenshots")
        except Exception as e:
            checks.check("browser (usd-overage) ran to the end", False, repr(e))

        # The contract: schemathesis generates requests from infra/openapi.yaml (valid and not)
        # against the served API; no 5xx, no status or body outside the document.
        s, b = http("PUT", f"{api}/v1/accounts/fuzz", svc, {"plan": "pro", "billing_contacts": [{"email": "fuzz@example.com"}]})
        seed = os.environ.get("TOPUP_FUZZ_SEED", "20261122")
        fuzz = subprocess.run(
            [str(ROOT / ".venv" / "st" / "bin" / "st"), "--config-file", "tests/contract/schemathesis.toml", "run",
             "infra/openapi.yaml", "--url", api, "-H", f"Authorization: Bearer {svc}", "--checks", "all",
             "--exclude-checks", "positive_data_acceptance", "-n", os.environ.get("TOPUP_FUZZ_EXAMPLES", "20"),
             "--seed", seed, "--phases", "examples,coverage,fuzzing", "--request-timeout", "40", "--no-color"],
            cwd=ROOT, env=dict(os.environ, SCHEMATHESIS_HOOKS=""), capture_output=True, text=True)
        (LOGS / "schemathesis.log").write_text(fuzz.stdout + fuzz.stderr)
        summary = [l for l in fuzz.stdout.splitlines() if "generated" in l or "failures" in l.lower()][-2:]
        checks.check(f"schemathesis against infra/openapi.yaml (seed {seed}): no 5xx, nothing undocumented",
                     s in (200, 201) and fuzz.returncode == 0, f"{summary}; see {LOGS / 'schemathesis.log'}")

        manifest = json.loads((ROOT / "events/expected.json").read_text())
        for file, expected in manifest:
            fn = file.split("-")[0] if file.startswith(("debit-", "notify-", "purchase-", "webhook-", "reconcile-")) else "credits-api"
            out = subprocess.run(["cargo", "lambda", "invoke", fn, "--data-file", f"events/{file}",
                                  "--invoke-address", "127.0.0.1", "--invoke-port", str(watch_port)],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            try:
                reply = json.loads(out.stdout)
                # An HTTP function answers a status; an event function's success stands for 200.
                status = reply.get("statusCode", 200 if out.returncode == 0 and fn in ("notify", "reconcile") else None)
            except json.JSONDecodeError:
                status = None
            checks.check(f"cargo lambda invoke {fn} --data-file events/{file} → {expected}",
                         status == expected, f"{status} {out.stdout[:300]} {out.stderr[-300:]}")
        r.shutdown()
    finally:
        stack.stop()


def browser_tests(moto: str, stripe: str, secret: str, checks: Checks) -> None:
    """The billing page in headless Chromium against a served voice-minutes stack (its own
    table and bus): blocks of minutes, and a Free plan without auto-reload."""
    sys.path.insert(0, str(ROOT / "tests" / "browser"))
    import billing_test

    stack = Stack()
    try:
        create_resources(moto, "topup-browser", "topup-browser", "example.com")
        env = function_env(moto, "voice-minutes", "topup-browser", "topup-browser", secret, stripe)
        watch_port, api_port = free_port(), free_port()
        r = start_functions(stack, env, watch_port, api_port)
        register_webhook(stripe, api_port)
        api = f"http://127.0.0.1:{api_port}"
        try:
            billing_test.run(api, moto, "topup-browser", lambda role, acct: token_for(role, acct, secret), http,
                             checks, ROOT / ".local" / "screenshots")
        except Exception as e:  # a scenario that could not even run is a failure, with its reason
            checks.check("browser tests ran to the end", False, repr(e))
        r.shutdown()
    finally:
        stack.stop()


def test(args) -> int:
    env0 = aws_env("http://127.0.0.1:1")
    started = time.time()
    log("building the workspace and its tests")
    subprocess.run(["cargo", "build", "--workspace", "--all-targets", "--locked"], cwd=ROOT, env=env0, check=True)
    stack = Stack()
    rc = 0
    checks = Checks()
    try:
        moto, stripe = start_emulators(stack, free_port(), free_port())
        env = test_env(moto, stripe)
        log("cargo test --workspace (unit, handler and integration tests against the emulators)")
        if subprocess.run(["cargo", "test", "--workspace", "--locked"], cwd=ROOT, env=env).returncode != 0:
            rc = 1
        log("cfn-lint infra/template.yaml")
        lint = subprocess.run([str(VENV_BIN / "cfn-lint"), "infra/template.yaml"], cwd=ROOT)
        checks.check("cfn-lint infra/template.yaml", lint.returncode == 0)
        log("sam validate --lint (offline, no credentials)")
        sam_env = dict(os.environ, SAM_CLI_TELEMETRY="0", AWS_DEFAULT_REGION=REGION, AWS_ACCESS_KEY_ID="test",
                       AWS_SECRET_ACCESS_KEY="test")
        sam = subprocess.run([str(ROOT / ".venv" / "sam" / "bin" / "sam"), "validate", "--lint", "-t",
                              "infra/template.yaml", "--region", REGION], cwd=ROOT, env=sam_env)
        checks.check("sam validate --lint", sam.returncode == 0)
        log("end to end through cargo lambda watch and the router")
        end_to_end(moto, stripe, DEFAULT_SECRET, checks)
        log("the billing page in headless Chromium")
        browser_tests(moto, stripe, DEFAULT_SECRET, checks)
    finally:
        stack.stop()
    if checks.failed:
        rc = 1
    log(f"done in {time.time() - started:.0f}s, {'green' if rc == 0 else 'RED (see above)'}")
    # The stack's own checks, as the closing line (cargo test printed its results above).
    print(f"\nstack: {checks.passed} passed, {checks.failed} failed", flush=True)
    return rc


# ---- fault injection ----------------------------------------------------------------------

def faults(args) -> int:
    """The fault-injection suite alone, with its own emulators. TOPUP_FAULT_SEED=N replays one
    schedule; TOPUP_FAULT_SCHEDULES, TOPUP_FAULT_STEPS and TOPUP_FAULT_BASE make longer runs."""
    env0 = aws_env("http://127.0.0.1:1")
    subprocess.run(["cargo", "build", "-p", "topup-tests", "--tests"], cwd=ROOT, env=env0, check=True)
    stack = Stack()
    try:
        moto, stripe = start_emulators(stack, free_port(), free_port())
        env = test_env(moto, stripe)
        return subprocess.run(["cargo", "test", "-p", "topup-tests", "--test", "faults", "--", "--nocapture"],
                              cwd=ROOT, env=env).returncode
    finally:
        stack.stop()


# ---- bench --------------------------------------------------------------------------------

# Every function the template deploys (each its own release binary).
FUNCTIONS = ["debit", "credits-api", "purchase", "webhook", "auto-recharge", "notify", "reconcile"]


def bench(args) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    import startup  # noqa: E402

    env0 = aws_env("http://127.0.0.1:1")
    log("release build of the functions and the throughput bench")
    subprocess.run(["cargo", "build", "--release", "--bins"] + [a for f in FUNCTIONS for a in ("-p", f)],
                   cwd=ROOT, env=env0, check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "topup-tests", "--example", "bench_debits",
                    "--example", "bench_recharge"], cwd=ROOT, env=env0, check=True)
    stack = Stack()
    try:
        moto, stripe = start_emulators(stack, free_port(), free_port())
        env = test_env(moto, stripe)
        subprocess.run([str(ROOT / "target/release/examples/bench_debits")], cwd=ROOT, env=env, check=True)
        print()
        subprocess.run([str(ROOT / "target/release/examples/bench_recharge")], cwd=ROOT, env=env, check=True)
        print()
        startup.report(ROOT, FUNCTIONS, aws_env(moto))
    finally:
        stack.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--profile", default=os.environ.get("TOPUP_PROFILE", "usd-overage"))
    s.add_argument("--port", type=int, default=int(os.environ.get("TOPUP_API_PORT", "9000")))
    s.add_argument("--watch-port", type=int, default=int(os.environ.get("TOPUP_WATCH_PORT", "9001")))
    s.add_argument("--moto-port", type=int, default=int(os.environ.get("TOPUP_MOTO_PORT", "4566")))
    s.add_argument("--stripe-port", type=int, default=int(os.environ.get("TOPUP_STRIPE_PORT", "8420")))
    sub.add_parser("test")
    sub.add_parser("faults")
    sub.add_parser("bench")
    t = sub.add_parser("token")
    t.add_argument("role", choices=["service", "owner", "admin", "member", "editor"])
    t.add_argument("--account", default=None)
    t.add_argument("--hours", type=int, default=12)
    args = p.parse_args()
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "test":
        return test(args)
    if args.cmd == "faults":
        return faults(args)
    if args.cmd == "bench":
        return bench(args)
    secret = os.environ.get("TOPUP_LOCAL_JWT_SECRET", DEFAULT_SECRET)
    if args.role != "service" and not args.account:
        p.error("a person's token needs --account")
    print(token_for(args.role, args.account, secret, args.hours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
