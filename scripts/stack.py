#!/usr/bin/env python3
"""topup's local stack, on 127.0.0.1 only, with no AWS account and no internet.

    serve   moto (DynamoDB, EventBridge, SES v2, SNS, SQS), localstripe, `cargo lambda watch`
            and an API router on :9000 that serves the template's routes; runs until Ctrl-C.
    test    every test: unit, handler and integration tests against the emulators, the
            template lint, and an end-to-end pass through `cargo lambda watch`, the router and
            `cargo lambda invoke` with the sample events (tests/e2e/end_to_end.py). Starts and
            stops its own servers.
    browser the browser tests alone (the billing page and the console in headless Chromium),
            with emulators of their own: what `test` runs last, for working on a page.
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
import types
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


# webhooks-out's retry queue and its dead letters, as the template's WebhookRetryQueue and
# WebhookRetryDeadLetters, named per bus (two served stacks never share a queue). The visibility
# timeout is the template's 180 s cut to 30: a batch item the function reports failed comes
# back within a local test's patience.
WEBHOOK_RETRY_QUEUE = "WebhookRetryQueue"
WEBHOOK_RETRY_DEAD_LETTERS = "WebhookRetryDeadLetters"
WEBHOOK_RETRY_VISIBILITY_S = 30
WEBHOOK_RETRY_MAX_RECEIVES = 5


def webhook_retry_queue(endpoint: str, bus: str) -> str:
    """Makes (or finds: the same attributes make the same queue) `<bus>-WebhookRetryQueue`, with
    its RedrivePolicy to `<bus>-WebhookRetryDeadLetters`, in the emulator; returns its URL.
    scripts/wiring.py hands its messages to webhooks-out as the template's SQS event does."""
    import boto3

    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test",
                       aws_secret_access_key="test")
    dlq = sqs.create_queue(QueueName=f"{bus}-{WEBHOOK_RETRY_DEAD_LETTERS}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": WEBHOOK_RETRY_MAX_RECEIVES})
    return sqs.create_queue(QueueName=f"{bus}-{WEBHOOK_RETRY_QUEUE}", Attributes={
        "VisibilityTimeout": str(WEBHOOK_RETRY_VISIBILITY_S), "MessageRetentionPeriod": "345600",
        "RedrivePolicy": redrive})["QueueUrl"]


def dead_letter_queue(endpoint: str, bus: str) -> str:
    """The URL of `<bus>-WebhookRetryDeadLetters` (made by `webhook_retry_queue`)."""
    import boto3

    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test",
                       aws_secret_access_key="test")
    return sqs.create_queue(QueueName=f"{bus}-{WEBHOOK_RETRY_DEAD_LETTERS}")["QueueUrl"]


def create_resources(endpoint: str, table: str, bus: str, sender_domain: str) -> None:
    """What the SAM template creates, made in the emulator: table (with TTL), bus, sender,
    webhooks-out's retry queue (with its dead-letter queue)."""
    import boto3  # from the venv (moto depends on it)

    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
    ddb = boto3.client("dynamodb", **kw)
    try:
        ddb.create_table(
            TableName=table, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"}
                                  for n in ("pk", "sk", "gsi1pk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk", "gsi4pk", "gsi5pk")],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[{
                "IndexName": "gsi1",
                "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"}, {"AttributeName": "pk", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }, {
                "IndexName": "gsi2",
                "KeySchema": [{"AttributeName": "gsi2pk", "KeyType": "HASH"}, {"AttributeName": "gsi2sk", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }, {
                # The audit log across accounts, and the console's lookups (rules §19).
                "IndexName": "gsi3",
                "KeySchema": [{"AttributeName": "gsi3pk", "KeyType": "HASH"}, {"AttributeName": "gsi3sk", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"},
            }, {
                "IndexName": "gsi4",
                "KeySchema": [{"AttributeName": "gsi4pk", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }, {
                "IndexName": "gsi5",
                "KeySchema": [{"AttributeName": "gsi5pk", "KeyType": "HASH"}],
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
    webhook_retry_queue(endpoint, bus)


def put_stripe_secret(endpoint: str, name: str, secret_key: str, webhook_secret: str) -> str:
    """The Stripe secret as the template's `StripeSecretName` holds it (`secret_key`,
    `webhook_secret`), made or updated in the emulator's Secrets Manager; returns its name."""
    import boto3

    sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test",
                      aws_secret_access_key="test")
    value = json.dumps({"secret_key": secret_key, "webhook_secret": webhook_secret})
    try:
        sm.create_secret(Name=name, SecretString=value)
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=name, SecretString=value)
    return name


def function_env(endpoint: str, profile: str, table: str, bus: str, secret: str, stripe: str) -> dict:
    """The served functions' environment. The Stripe key and webhook secret are not in it: as
    deployed, they are read from Secrets Manager, here the secret `<bus>-stripe` (one per
    served stack) that this writes into the emulator."""
    env = aws_env(endpoint)
    # Your own test-mode key and webhook secret (with https://api.stripe.com instead of
    # localstripe), if you set them, go into the secret; the functions never see them as variables.
    stripe_secret = put_stripe_secret(endpoint, f"{bus}-stripe",
                                      env.pop("TOPUP_STRIPE_SECRET_KEY", None) or "sk_test_local_stack",
                                      env.pop("TOPUP_STRIPE_WEBHOOK_SECRET", None) or LOCAL_WEBHOOK_SECRET)
    env.update({
        "TOPUP_PROFILE": profile,
        "TOPUP_TABLE": table,
        "TOPUP_EVENT_BUS": bus,
        "TOPUP_LOCAL_JWT_SECRET": secret,
        # The service is its OAuth client (rules §16): locally, the client id its tokens carry.
        "TOPUP_SERVICE_CLIENT_ID": LOCAL_SERVICE_CLIENT_ID,
        "TOPUP_STRIPE_SECRET_ID": stripe_secret,
        "TOPUP_STRIPE_API_BASE": env.get("TOPUP_STRIPE_API_BASE", stripe),
        # Hosted: the session's `url` is localstripe's test payment page, which a person can open.
        "TOPUP_CHECKOUT_UI": env.get("TOPUP_CHECKOUT_UI", "hosted"),
        "TOPUP_EMAIL_FROM": env.get("TOPUP_EMAIL_FROM", "billing@example.com"),
        "TOPUP_BILLING_URL": env.get("TOPUP_BILLING_URL", "http://localhost:3000/settings/billing"),
        # Webhooks out: the retry queue (made by create_resources; found again here), endpoints
        # on http:// and 127.0.0.1 (a receiver you run yourself; never in the template), and a
        # retry schedule of seconds rather than days, so that a local test sees an endpoint
        # retried, given up on and disabled.
        "TOPUP_WEBHOOK_QUEUE_URL": env.get("TOPUP_WEBHOOK_QUEUE_URL") or webhook_retry_queue(endpoint, bus),
        # The console shows the depth of each (rules §19): webhooks-out's retries' dead letters
        # here (the failure queues scripts/wiring.py makes are named in `serve`'s banner).
        "TOPUP_DEAD_LETTER_QUEUES": env.get("TOPUP_DEAD_LETTER_QUEUES") or dead_letter_queue(endpoint, bus),
        "TOPUP_SUPPORT_ADJUST_LIMIT": env.get("TOPUP_SUPPORT_ADJUST_LIMIT", "100"),
        "TOPUP_WEBHOOK_ALLOW_LOOPBACK": env.get("TOPUP_WEBHOOK_ALLOW_LOOPBACK", "true"),
        "TOPUP_WEBHOOK_RETRY_SCHEDULE": env.get("TOPUP_WEBHOOK_RETRY_SCHEDULE", "1,2,4,8,16,30"),
        "TOPUP_WEBHOOK_RETRY_WINDOW": env.get("TOPUP_WEBHOOK_RETRY_WINDOW", "300"),
        "TOPUP_WEBHOOK_DISABLE_AFTER": env.get("TOPUP_WEBHOOK_DISABLE_AFTER", "900"),
        "AWS_LAMBDA_LOG_LEVEL": env.get("AWS_LAMBDA_LOG_LEVEL", "info"),
    })
    return env


def start_functions(stack: Stack, env: dict, watch_port: int, api_port: int, reload: bool = True):
    import router  # needs PyYAML from the venv
    # Build first so the first request does not wait for a compile.
    subprocess.run(["cargo", "build", "--bins"], cwd=ROOT, env=env, check=True)
    # `serve` reloads a function when its code changes; a test run does not, since a file the
    # run itself writes (a tool's cache in the tree) would restart a function mid-invocation
    # and leave that invocation unanswered.
    stack.spawn("cargo-lambda-watch", ["cargo", "lambda", "watch", "--invoke-address", "127.0.0.1",
                                       "--invoke-port", str(watch_port)] + ([] if reload else ["--ignore-changes"]),
                env=env)
    wait_http(f"http://127.0.0.1:{watch_port}/")
    r = router.Router(ROOT / "infra/template.yaml", f"http://127.0.0.1:{watch_port}", env.get("TOPUP_ALLOWED_ORIGINS", ""))
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


# The client id of the local service token: deployed, the service is known by its OAuth client's
# id (ServiceClientId), never by a role claim (rules §16).
LOCAL_SERVICE_CLIENT_ID = "topup-local-service"
# Roles a local token may carry: the service, people of one account, and staff across accounts.
TOKEN_ROLES = ["service", "owner", "admin", "member", "editor", "support", "finance"]
STAFF_ROLES = {"support", "finance"}


def token_for(role: str, account: str | None, secret: str, hours: int = 12) -> str:
    claims = {"sub": f"local-{role}", "role": role, "exp": int(time.time()) + hours * 3600}
    if role == "service":
        claims["client_id"] = LOCAL_SERVICE_CLIENT_ID
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
        failures = "\n".join(f"  {binary:<15} {url.rsplit('/', 1)[-1]}" for binary, url in r.forwarder.failure_queues.items())
        retries = env["TOPUP_WEBHOOK_QUEUE_URL"].rsplit("/", 1)[-1]
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
Events a function still failed on after its retries land in its failure queue:
{failures}
  scripts/redrive --queue <queue> --endpoint-url {moto} --lambda-endpoint-url http://127.0.0.1:{args.watch_port}
Webhooks out to a receiver of your own (locally http:// and 127.0.0.1 are allowed):
  curl -s -X POST http://127.0.0.1:{args.port}/v1/webhook-endpoints -H "authorization: Bearer $T" \\
       -H 'content-type: application/json' -d '{{"url":"http://127.0.0.1:8080/hook","events":["*"]}}'
  Retries wait in {retries} (seconds apart: {env['TOPUP_WEBHOOK_RETRY_SCHEDULE']}); a retry webhooks-out
  itself failed on {WEBHOOK_RETRY_MAX_RECEIVES} times goes to {retries.replace(WEBHOOK_RETRY_QUEUE, WEBHOOK_RETRY_DEAD_LETTERS)}.
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

def stack_api() -> types.SimpleNamespace:
    """The plumbing the end-to-end scenarios of tests/e2e/end_to_end.py serve their stacks with,
    handed to them so that they never import this script."""
    return types.SimpleNamespace(ROOT=ROOT, LOGS=LOGS, REGION=REGION, Stack=Stack, free_port=free_port,
                                 create_resources=create_resources, function_env=function_env,
                                 start_functions=start_functions, register_webhook=register_webhook,
                                 token_for=token_for)


class Phases:
    """Each phase of the test command and how long it took, printed at the end (the command's
    budget is 20 minutes on a fresh 2-core machine; this says where the time goes)."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float]] = []
        self.started = time.time()

    def run(self, name: str, fn):
        log(name)
        t = time.time()
        try:
            return fn()
        finally:
            self.done.append((name, time.time() - t))

    def report(self) -> None:
        print("\ntest command phases:", flush=True)
        for name, secs in self.done:
            print(f"  {secs:7.1f}s  {name}", flush=True)
        print(f"  {time.time() - self.started:7.1f}s  in all (bootstrap not counted: it ran before)", flush=True)


# Schedules the emulator-backed fault suite runs in the test command: it checks the adapters'
# realism under injected faults (each schedule is seconds of wall clock against moto); longer
# runs are ./scripts/faults (TOPUP_FAULT_SCHEDULES, default 200).
TEST_FAULT_SCHEDULES = "30"


def test(args) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    import end_to_end  # the end-to-end scenarios and the checks' tally

    env0 = aws_env("http://127.0.0.1:1")
    started = time.time()
    phases = Phases()
    phases.run("building the workspace and its tests",
               lambda: subprocess.run(["cargo", "build", "--workspace", "--all-targets", "--locked"], cwd=ROOT,
                                      env=env0, check=True))
    stack = Stack()
    rc = 0
    checks = end_to_end.Checks()
    try:
        moto, stripe = start_emulators(stack, free_port(), free_port())
        env = test_env(moto, stripe)
        env.setdefault("TOPUP_FAULT_SCHEDULES", TEST_FAULT_SCHEDULES)
        # The fault suite runs after the rest, as its own phase.
        unit = phases.run("cargo test --workspace, but the fault suite (unit, handler and integration tests against the emulators)",
                          lambda: subprocess.run(["cargo", "test", "--workspace", "--locked", "--no-fail-fast", "--", "--skip",
                                                  "random_schedules_with_failures_keep_every_invariant"], cwd=ROOT, env=env))
        if unit.returncode != 0:
            rc = 1
        fault = phases.run(f"the fault suite ({env['TOPUP_FAULT_SCHEDULES']} schedules against the emulators)",
                           lambda: subprocess.run(["cargo", "test", "-p", "topup-tests", "--test", "faults", "--locked"],
                                                  cwd=ROOT, env=env))
        if fault.returncode != 0:
            rc = 1
        docs = phases.run("docs: links of README.md and docs/, the two commands (scripts/check_docs.py)",
                          lambda: subprocess.run([sys.executable, "scripts/check_docs.py"], cwd=ROOT))
        checks.check("scripts/check_docs.py", docs.returncode == 0)
        lint = phases.run("cfn-lint infra/template.yaml",
                          lambda: subprocess.run([str(VENV_BIN / "cfn-lint"), "infra/template.yaml"], cwd=ROOT))
        checks.check("cfn-lint infra/template.yaml", lint.returncode == 0)
        sam_env = dict(os.environ, SAM_CLI_TELEMETRY="0", AWS_DEFAULT_REGION=REGION, AWS_ACCESS_KEY_ID="test",
                       AWS_SECRET_ACCESS_KEY="test")
        sam = phases.run("sam validate --lint (offline, no credentials)",
                         lambda: subprocess.run([str(ROOT / ".venv" / "sam" / "bin" / "sam"), "validate", "--lint", "-t",
                                                 "infra/template.yaml", "--region", REGION], cwd=ROOT, env=sam_env))
        checks.check("sam validate --lint", sam.returncode == 0)
        phases.run("end to end through cargo lambda watch and the router",
                   lambda: end_to_end.run(moto, stripe, DEFAULT_SECRET, checks, stack_api()))
        phases.run("the billing page in headless Chromium",
                   lambda: end_to_end.browser_tests(moto, stripe, DEFAULT_SECRET, checks, stack_api()))
        sys.path.insert(0, str(ROOT / "tests" / "sdks"))
        import clients  # tests/sdks/clients.py
        phases.run("the clients (sdks/): installed as users install them, their tests, a scenario and the card",
                   lambda: clients.run(moto, stripe, DEFAULT_SECRET, checks, stack_api()))
    finally:
        stack.stop()
    if checks.failed:
        rc = 1
    phases.report()
    log(f"done in {time.time() - started:.0f}s, {'green' if rc == 0 else 'RED (see above)'}")
    # The stack's own checks, as the closing line (cargo test printed its results above).
    print(f"\nstack: {checks.passed} passed, {checks.failed} failed", flush=True)
    return rc


# ---- fault injection ----------------------------------------------------------------------

def browser(args) -> int:
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    import end_to_end

    subprocess.run(["cargo", "build", "--bins"], cwd=ROOT, env=aws_env("http://127.0.0.1:1"), check=True)
    stack = Stack()
    checks = end_to_end.Checks()
    try:
        moto, stripe = start_emulators(stack, free_port(), free_port())
        end_to_end.browser_tests(moto, stripe, DEFAULT_SECRET, checks, stack_api(), only=args.only)
    finally:
        stack.stop()
    print(f"\nbrowser: {checks.passed} passed, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


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
FUNCTIONS = ["debit", "credits-api", "purchase", "webhook", "auto-recharge", "notify", "reconcile", "webhooks-out"]


def bench(args) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    import startup  # noqa: E402

    env0 = aws_env("http://127.0.0.1:1")
    log("release build of the functions and the throughput bench")
    subprocess.run(["cargo", "build", "--release", "--bins"] + [a for f in FUNCTIONS for a in ("-p", f)],
                   cwd=ROOT, env=env0, check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "topup-tests", "--example", "bench_model",
                    "--example", "bench_debits", "--example", "bench_recharge", "--example", "bench_sweep", "--example", "bench_webhooks"],
                   cwd=ROOT, env=env0, check=True)
    # The DynamoDB model needs no emulator: it runs first, in virtual time.
    subprocess.run([str(ROOT / "target/release/examples/bench_model")], cwd=ROOT, env=env0, check=True)
    print()
    stack = Stack()
    try:
        moto, stripe = start_emulators(stack, free_port(), free_port())
        env = test_env(moto, stripe)
        subprocess.run([str(ROOT / "target/release/examples/bench_debits")], cwd=ROOT, env=env, check=True)
        print()
        subprocess.run([str(ROOT / "target/release/examples/bench_recharge")], cwd=ROOT, env=env, check=True)
        print()
        subprocess.run([str(ROOT / "target/release/examples/bench_sweep")], cwd=ROOT, env=env, check=True)
        print()
        subprocess.run([str(ROOT / "target/release/examples/bench_webhooks")], cwd=ROOT, env=env, check=True)
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
    b = sub.add_parser("browser")
    b.add_argument("--only", choices=["billing", "console"], default=None)
    sub.add_parser("bench")
    t = sub.add_parser("token")
    t.add_argument("role", choices=TOKEN_ROLES)
    t.add_argument("--account", default=None)
    t.add_argument("--hours", type=int, default=12)
    args = p.parse_args()
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "test":
        return test(args)
    if args.cmd == "faults":
        return faults(args)
    if args.cmd == "browser":
        return browser(args)
    if args.cmd == "bench":
        return bench(args)
    secret = os.environ.get("TOPUP_LOCAL_JWT_SECRET", DEFAULT_SECRET)
    if args.role not in STAFF_ROLES | {"service"} and not args.account:
        p.error("a person's token needs --account")
    if args.role in STAFF_ROLES and args.account:
        p.error("staff (support, finance) work across accounts: no --account")
    print(token_for(args.role, args.account, secret, args.hours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
