"""EventBridge wiring of the local stack, read from infra/template.yaml so the two cannot drift.

Each `EventBridgeRule` event of a function in the template becomes, in moto, a rule on the bus
with the same pattern and an SQS target; a forwarder thread hands each message to the function
served by `cargo lambda watch` (the Lambda Invoke API), deleting it only when the function
succeeded. A failed invocation stays on the queue and comes back after a short visibility
timeout, like EventBridge's retries.
"""

import json
import pathlib
import threading
import time
import urllib.error
import urllib.request

import boto3

from router import function_events  # the template reader the routes use too

REGION = "us-east-1"


def rules_from_template(path: pathlib.Path) -> list[tuple[str, str, dict]]:
    """[(binary, event name, pattern)] for every EventBridgeRule event in the template."""
    return [(binary, name, props["Pattern"]) for binary, name, props in function_events(path, "EventBridgeRule")]


class Forwarder:
    def __init__(self, moto: str, bus: str, template: pathlib.Path, watch: str, log) -> None:
        kw = dict(endpoint_url=moto, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
        self.sqs = boto3.client("sqs", **kw)
        events = boto3.client("events", **kw)
        self.watch = watch.rstrip("/")
        self.log = log
        self.queues: list[tuple[str, str]] = []
        for binary, name, pattern in rules_from_template(template):
            qname = f"{bus}-{binary}-{name}"  # per bus: two served stacks never share a queue
            url = self.sqs.create_queue(QueueName=qname, Attributes={"VisibilityTimeout": "5"})["QueueUrl"]
            rule = f"local-{binary}-{name}"
            events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
            events.put_targets(Rule=rule, EventBusName=bus,
                               Targets=[{"Id": "q", "Arn": f"arn:aws:sqs:{REGION}:123456789012:{qname}"}])
            self.queues.append((binary, url))
            log(f"rule {rule} on bus {bus} → {binary}")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def _invoke(self, binary: str, body: str) -> bool:
        req = urllib.request.Request(f"{self.watch}/2015-03-31/functions/{binary}/invocations",
                                     data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                failed = r.headers.get("X-Amz-Function-Error")
                if failed:
                    self.log(f"{binary} failed ({failed}): {r.read()[:300]!r}; it will be retried")
                return r.status < 300 and not failed
        except (urllib.error.URLError, OSError) as e:
            self.log(f"{binary} not reachable: {e}; it will be retried")
            return False

    def _run(self) -> None:
        while not self.stopping.is_set():
            for binary, url in self.queues:
                try:
                    msgs = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
                except Exception as e:  # the emulator is stopping
                    self.log(f"queue read failed: {e}")
                    msgs = []
                for m in msgs:
                    if self._invoke(binary, m["Body"]):
                        self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            self.stopping.wait(0.5)
