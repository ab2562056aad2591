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

Each `SQS` event of a function (an event source mapping: webhooks-out's retry queue) is polled
as Lambda's poller does: up to `BatchSize` messages (at most 10 a receive) go to the function in
one invocation, in Lambda's SQS event shape (`{"Records": [...]}`). When the function succeeds
every message is deleted, except, with `FunctionResponseTypes: [ReportBatchItemFailures]`, the
ones it names in `{"batchItemFailures": [{"itemIdentifier": <messageId>}]}`; when it fails,
none is. A message left on the queue comes back after the queue's visibility timeout. The queue
is the template's `!GetAtt X.Arn`, made per bus as `<bus>-<X>` by scripts/stack.py
(`create_resources`, with X's dead-letter queue) before this starts. moto itself holds back a
message sent with `DelaySeconds` and moves one to the dead-letter queue after `maxReceiveCount`
receives (the RedrivePolicy), as SQS does, so neither is done here.

Each function's rule queues and each SQS source are polled on their own thread: a function that
takes long (webhooks-out waiting on a customer's endpoint) never holds up another's events.
"""

import base64
import datetime
import hashlib
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


def sqs_sources(path: pathlib.Path) -> list[tuple[str, str, int, bool]]:
    """[(binary, logical id of the queue, BatchSize, reports batch item failures)] for every SQS
    event in the template whose `Queue` is `!GetAtt X.Arn` (read as "X.Arn" or [X, Arn])."""
    out = []
    for binary, name, props in function_events(path, "SQS"):
        queue = props.get("Queue")
        if isinstance(queue, list) and queue:
            queue = str(queue[0])
        elif isinstance(queue, str) and queue.endswith(".Arn"):
            queue = queue[: -len(".Arn")]
        else:
            raise ValueError(f"{binary} {name}: Queue must be !GetAtt <queue>.Arn, not {queue!r}")
        partial = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
        out.append((binary, queue, int(props.get("BatchSize", 10)), partial))
    return out


def sqs_record(m: dict, queue: str) -> dict:
    """One message as Lambda's SQS event source hands it to the function."""
    record = {
        "messageId": m["MessageId"],
        "receiptHandle": m["ReceiptHandle"],
        "body": m["Body"],
        "attributes": dict(m.get("Attributes") or {}),
        "messageAttributes": {
            name: {"stringValue": a.get("StringValue"),
                   "binaryValue": base64.b64encode(a["BinaryValue"]).decode() if "BinaryValue" in a else None,
                   "stringListValues": [], "binaryListValues": [], "dataType": a.get("DataType", "String")}
            for name, a in (m.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
        "awsRegion": REGION,
    }
    if m.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = m["MD5OfMessageAttributes"]
    return record


def batch_item_failures(payload: bytes, ids: set[str]) -> set[str] | None:
    """The message ids a partial batch response names as failed, or None when Lambda would
    count the whole batch as failed: a response that is not JSON, or an item whose
    `itemIdentifier` is missing, empty or not a message of the batch. No response, null, `{}`
    and an empty or null list are a complete success."""
    try:
        reply = json.loads(payload) if payload.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if reply is None:
        return set()
    if not isinstance(reply, dict):
        return None
    items = reply.get("batchItemFailures") or []
    if not isinstance(items, list):
        return None
    failed = set()
    for item in items:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or ident not in ids:
            return None
        failed.add(ident)
    return failed


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
        self.sqs = boto3.client("sqs", **kw)  # a client is thread-safe; the threads below share it
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
        # (binary, queue name, URL, BatchSize, reports batch item failures) of each SQS event.
        self.sources: list[tuple[str, str, str, int, bool]] = []
        for binary, queue, batch, partial in sqs_sources(template):
            qname = f"{bus}-{queue}"  # per bus, made by scripts/stack.py with its dead-letter queue
            try:
                url = self.sqs.get_queue_url(QueueName=qname)["QueueUrl"]
            except self.sqs.exceptions.QueueDoesNotExist:
                url = self.sqs.create_queue(QueueName=qname)["QueueUrl"]
                log(f"queue {qname} was not made by create_resources: made now, without a dead-letter queue")
            self.sources.append((binary, qname, url, batch, partial))
            log(f"queue {qname} → {binary}, up to {batch} messages an invocation")
        self.stopping = threading.Event()
        # One thread per function's rule queues and one per SQS source.
        by_binary: dict[str, list[str]] = {}
        for binary, url in self.queues:
            by_binary.setdefault(binary, []).append(url)
        self.threads = [threading.Thread(target=self._run, args=(binary, urls), daemon=True)
                        for binary, urls in by_binary.items()]
        self.threads += [threading.Thread(target=self._run_source, args=source, daemon=True) for source in self.sources]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=5)

    def _invoke(self, binary: str, body: str) -> tuple[str, bytes]:
        """("ok" | "failed" | "unreachable", the function's response or its error payload)."""
        req = urllib.request.Request(f"{self.watch}/2015-03-31/functions/{binary}/invocations",
                                     data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                failed, payload = r.headers.get("X-Amz-Function-Error"), r.read()
                if failed or r.status >= 300:
                    self.log(f"{binary} failed ({failed or r.status}): {payload[:300]!r}")
                    return "failed", payload
                return "ok", payload
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

    def _run(self, binary: str, urls: list[str]) -> None:
        """Forwards the events of one function's rule queues."""
        while not self.stopping.is_set():
            for url in urls:
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

    def _run_source(self, binary: str, qname: str, url: str, batch: int, partial: bool) -> None:
        """Lambda's poller of one SQS event source (see the module's docstring). A receive never
        waits (WaitTimeSeconds 0): moto serves one request at a time (tests/support/
        moto_serial.py), so a long poll would hold up every other client."""
        while not self.stopping.is_set():
            try:
                msgs = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(batch, 10), WaitTimeSeconds=0,
                                                AttributeNames=["All"],
                                                MessageAttributeNames=["All"]).get("Messages", [])
            except Exception as e:  # the emulator is stopping
                self.log(f"queue read failed: {e}")
                msgs = []
            if not msgs:
                self.stopping.wait(0.5)
                continue
            try:
                ids = {m["MessageId"] for m in msgs}
                outcome, payload = self._invoke(binary, json.dumps({"Records": [sqs_record(m, qname) for m in msgs]}))
                if outcome != "ok":
                    # Every message stays, back after the visibility timeout (moto counts the
                    # receive toward the dead-letter queue).
                    self.log(f"{binary}: a batch of {len(msgs)} from {qname} stays on the queue")
                    continue
                failed = batch_item_failures(payload, ids) if partial else set()
                if failed is None:
                    self.log(f"{binary}: not a valid partial batch response, the whole batch stays: {payload[:300]!r}")
                    continue
                for m in msgs:
                    if m["MessageId"] not in failed:
                        self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                if failed:
                    self.log(f"{binary}: {len(failed)} of {len(msgs)} from {qname} failed; they stay on the queue")
            except Exception as e:  # the emulator is stopping
                self.log(f"forwarding failed: {e}")
