"""The client covers every route of infra/openapi.yaml: each operation is in `OPERATIONS` with the
document's method and path (or in `NOT_FOR_CLIENTS`, with a reason), and the `Client` method it
names sends exactly that request. A route added to the document without a client method fails
here."""

import inspect
import pathlib
import re
import unittest

import yaml

import topup
from mockapi import MockApi

ROOT = pathlib.Path(__file__).resolve().parents[3]
METHODS = ("get", "put", "post", "delete", "patch")

# A value for each parameter name a client method takes, to call every one of them.
SAMPLES = {
    "account_id": "acct-1", "grant_id": "gr_1", "hold_id": "hold_1", "purchase_id": "pur_1", "endpoint_id": "we_1",
    "delivery_id": "wd_1", "entity": "user:ann", "payment_id": "pi_1", "plan": "free", "billing_contacts": [{"email": "a@example.com"}],
    "amount": 1, "reason": "r", "enabled": True, "consumable": "api_calls", "quantity": 1, "thresholds": [1],
    "lanes": 2, "events": ["*"], "url": "https://example.com/h", "month": "2026-01",
}
# Where one name means another thing in another method.
OVERRIDES = {("debit_batch", "events"): [{"consumable": "api_calls", "quantity": 1}]}


def document_operations():
    doc = yaml.safe_load((ROOT / "infra/openapi.yaml").read_text())
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield op["operationId"], method.upper(), path


class Coverage(unittest.TestCase):
    def test_every_route_of_the_document_has_a_client_method(self):
        ops = list(document_operations())
        self.assertGreater(len(ops), 30)
        missing = [f"{oid} {m} {p}" for oid, m, p in ops if oid not in topup.OPERATIONS and oid not in topup.NOT_FOR_CLIENTS]
        self.assertEqual(missing, [], "routes of infra/openapi.yaml the Python client lacks")
        for oid, method, path in ops:
            if oid in topup.OPERATIONS:
                op = topup.OPERATIONS[oid]
                self.assertEqual((op.method, op.path), (method, path), oid)
                self.assertTrue(callable(getattr(topup.Client, op.client_method, None)), op.client_method)
                self.assertTrue(inspect.getdoc(getattr(topup.Client, op.client_method)), f"{op.client_method} has no doc")

    def test_nothing_in_the_tables_is_missing_from_the_document(self):
        ids = {oid for oid, _, _ in document_operations()}
        self.assertEqual(sorted(set(topup.OPERATIONS) - ids), [], "client operations the document no longer has")
        self.assertEqual(sorted(set(topup.NOT_FOR_CLIENTS) - ids), [], "exclusions the document no longer has")

    def test_each_method_sends_its_operations_request(self):
        with MockApi(lambda req: (200, {"next_cursor": None}, {})) as api:
            client = topup.Client(api.url, "tok")
            for oid, op in topup.OPERATIONS.items():
                fn = getattr(client, op.client_method)
                params = inspect.signature(fn).parameters.values()
                args = {p.name: OVERRIDES.get((op.client_method, p.name), SAMPLES.get(p.name))
                        for p in params if p.default is inspect.Parameter.empty}
                before = len(api.requests)
                fn(**args)
                self.assertEqual(len(api.requests), before + 1, oid)
                req = api.requests[-1]
                want = re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)].replace(":", "%3A"), op.path)
                self.assertEqual((req.method, req.raw_path), (op.method, want), oid)


if __name__ == "__main__":
    unittest.main()
