"""EventBridge wiring of the local stack, read from infra/template.yaml so the two cannot drift.

Each `EventBridgeRule` event of a function in the template becomes, in moto, a rule on the bus
with the same pattern and an SQS target; a forwarder thread hands each message to the function
served by `cargo lambda watch` (the Lambda Invoke API), deleting it only when the function
succeeded. A failed invocation stays on the queue and comes back after a short visibility
timeout, like Lambda's retries of an asynchronous invocation.

The function's `EventInvokeConfig` is honoured as Lambda does: after 1 + MaximumRetryAttempts
failed invocations of one event, Lambda's on-failure destination record (the event in
`requestPayload`, the error in `responsePayload`) goes to the function's failure queue, made
per bus as `<bus>-<destination logical id>`, and the event leaves the rule's queue.
`scripts/redrive` invokes the function again with each record.
"""

import datetime
import json
import pathlib
import threading
import urllib.error
import urllib.request
import uuid

import boto3
import yaml

from router import _CfnLoader, function_events  # the template reader the routes use too

REGION = "us-east-1"
ACCOUNT = "123456789012"
# Lambda's default for an asynchronous invocation without an EventInvokeConfig.
DEFAULT_RETRIES = 2


def rules_from_template(path: pathlib.Path) -> list[tuple[str, str, dict]]:
    """[(binary, event name, pattern)] for every EventBridgeRule event in the template."""
    return [(binary, name, props["Pattern"]) for binary, name, props in function_events(path, "EventBridgeRule")]


def invoke_configs(path: pathlib.Path) -> dict[str, tuple[int, str | None]]:
    """{binary: (MaximumRetryAttempts, logical id of its SQS on-failure destination or None)} for
    every function of the template that has an `EventInvokeConfig`."""
    doc = yaml.load(path.read_text(), Loader=_CfnLoader)
    out = {}
    for res in doc.get("Resources", {}).values():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        binary = res.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        config = res.get("Properties", {}).get("EventInvokeConfig")
        if not binary or not config:
            continue
        retries = int(config.get("MaximumRetryAttempts", DEFAULT_RETRIES))
        failure = (config.get("DestinationConfig") or {}).get("OnFailure") or {}
        target = None
        if failure.get("Type") == "SQS":
            dest = failure.get("Destination")  # `!GetAtt X.Arn` reads as "X.Arn" (or [X, Arn])
            if isinstance(dest, list) and dest:
                target = str(dest[0])
            elif isinstance(dest, str) and dest.endswith(".Arn"):
                target = dest[: -len(".Arn")]
        out[binary] = (retries, target)
    return out


def destination_record(binary: str, event: dict, attempts: int, error: bytes) -> dict:
    """What Lambda sends to an on-failure destination when an asynchronous invocation's retries
    are exhausted."""
    try:
        response = json.loads(error)
    except (json.JSONDecodeError, UnicodeDecodeError):
        response = error.decode("utf-8", "replace")
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "version": "1.0",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{binary}",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": response,
    }


class Forwarder:
    def __init__(self, moto: str, bus: str, template: pathlib.Path, watch: str, log) -> None:
        kw = dict(endpoint_url=moto, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
        self.sqs = boto3.client("sqs", **kw)
        events = boto3.client("events", **kw)
        self.watch = watch.rstrip("/")
        self.log = log
        self.queues: list[tuple[str, str]] = []
        # binary → URL of its failure queue; binary → attempts before an event goes there.
        self.failure_queues: dict[str, str] = {}
        self.attempts: dict[str, int] = {}
        for binary, (retries, target) in invoke_configs(template).items():
            self.attempts[binary] = 1 + retries
            if target:
                qname = f"{bus}-{target}"  # per bus: two served stacks never share a queue
                url = self.sqs.create_queue(QueueName=qname)["QueueUrl"]
                self.failure_queues[binary] = url
                log(f"failure queue {qname} ← {binary} after {1 + retries} failed attempts")
        for binary, name, pattern in rules_from_template(template):
            qname = f"{bus}-{binary}-{name}"  # per bus: two served stacks never share a queue
            url = self.sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
            rule = f"local-{binary}-{name}"
            events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
            events.put_targets(Rule=rule, EventBusName=bus,
                               Targets=[{"Id": "q", "Arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{qname}"}])
            self.queues.append((binary, url))
            log(f"rule {rule} on bus {bus} → {binary}")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _invoke(self, binary: str, body: str) -> tuple[str, bytes]:
        """("ok" | "failed" | "unreachable", the function's error payload when it failed)."""
        req = urllib.request.Request(f"{self.watch}/2015-03-31/functions/{binary}/invocations",
                                     data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                failed, payload = r.headers.get("X-Amz-Function-Error"), r.read()
                if failed or r.status >= 300:
                    self.log(f"{binary} failed ({failed or r.status}): {payload[:300]!r}")
                    return "failed", payload
                return "ok", b""
        except urllib.error.HTTPError as e:  # the function's error, answered with a 4xx or 5xx status
            payload = e.read()
            self.log(f"{binary} failed ({e.headers.get('X-Amz-Function-Error') or e.code}): {payload[:300]!r}")
            return "failed", payload
        except (urllib.error.URLError, OSError) as e:
            # Not the function's failure (cargo lambda watch restarting): retried, never counted.
            self.log(f"{binary} not reachable: {e}; it will be retried")
            return "unreachable", b""

    def _dead_letter(self, binary: str, url: str, m: dict, attempts: int, error: bytes) -> None:
        try:
            event = json.loads(m["Body"])
        except json.JSONDecodeError:
            event = m["Body"]
        record = destination_record(binary, event, attempts, error)
        self.sqs.send_message(QueueUrl=self.failure_queues[binary], MessageBody=json.dumps(record))
        self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        self.log(f"{binary} failed {attempts} times; the event went to {self.failure_queues[binary].rsplit('/', 1)[-1]}")

    def _run(self) -> None:
        while not self.stopping.is_set():
            for binary, url in self.queues:
                try:
                    msgs = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                                    AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
                except Exception as e:  # the emulator is stopping
                    self.log(f"queue read failed: {e}")
                    msgs = []
                for m in msgs:
                    try:
                        outcome, error = self._invoke(binary, m["Body"])
                        if outcome == "ok":
                            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                            continue
                        attempts = int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
                        if outcome == "failed" and binary in self.failure_queues and attempts >= self.attempts[binary]:
                            self._dead_letter(binary, url, m, attempts, error)
                        elif outcome == "failed":
                            self.log(f"{binary}: attempt {attempts}; it will be retried")
                    except Exception as e:  # the emulator is stopping
                        self.log(f"forwarding failed: {e}")
            self.stopping.wait(0.5)
