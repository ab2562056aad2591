"""The client against a scripted local server: requests as the API documents them, idempotency
keys made once and reused across retries, retries with backoff and `Retry-After`, errors as
`TopupError`, page iterators."""

import socket
import time
import unittest
import uuid

import topup
from mockapi import MockApi, error, script


def client(api, **kw):
    kw.setdefault("backoff", 0.001)
    c = topup.Client(api.url, "tok", **kw)
    c.sleeps = []

    def sleep(s):
        c.sleeps.append(s)
    c._sleep = sleep
    return c


class Requests(unittest.TestCase):
    def test_debit_posts_usage_with_the_token_and_a_generated_key(self):
        body = {"from_allowance": 0, "from_credits": 1500, "balance": 98500, "transaction_id": "tx_1"}
        with MockApi(script((200, body, {}))) as api:
            got = client(api).debit("acme", "api_calls", 1500)
            self.assertEqual(got, body)
            (req,) = api.requests
            self.assertEqual((req.method, req.raw_path), ("POST", "/v1/accounts/acme/usage"))
            self.assertEqual(req.headers["authorization"], "Bearer tok")
            self.assertEqual(req.headers["content-type"], "application/json")
            sent = req.json()
            self.assertEqual((sent["consumable"], sent["quantity"]), ("api_calls", 1500))
            uuid.UUID(sent["idempotency_key"])  # a generated key
            self.assertNotIn("entity", sent)

    def test_a_given_key_and_entity_are_sent_as_they_are(self):
        with MockApi(script()) as api:
            client(api).debit("acme", "api_calls", 1, idempotency_key="u-1", entity="user:ann")
            self.assertEqual(api.requests[0].json(),
                             {"consumable": "api_calls", "quantity": 1, "idempotency_key": "u-1", "entity": "user:ann"})

    def test_two_debits_without_keys_get_two_keys(self):
        with MockApi(script()) as api:
            c = client(api)
            c.debit("acme", "api_calls", 1)
            c.debit("acme", "api_calls", 1)
            keys = {r.json()["idempotency_key"] for r in api.requests}
            self.assertEqual(len(keys), 2)

    def test_check_sends_its_query_and_answers_the_body(self):
        answer = {"allowed": False, "reason": "insufficient_credits", "cost": 5, "available": 0}
        with MockApi(script((200, answer, {}))) as api:
            got = client(api).check("acme", "api_calls", 3, entity="proj:x")
            self.assertEqual(got, answer)
            req = api.requests[0]
            self.assertEqual((req.method, req.raw_path), ("GET", "/v1/accounts/acme/credits/check"))
            self.assertEqual(req.query, {"consumable": "api_calls", "quantity": "3", "entity": "proj:x"})
            self.assertEqual(req.body, b"")

    def test_path_parameters_are_percent_encoded(self):
        with MockApi(script()) as api:
            client(api).credits("a b/c?")
            self.assertEqual(api.requests[0].raw_path, "/v1/accounts/a%20b%2Fc%3F/credits")

    def test_an_empty_path_parameter_is_refused_before_sending(self):
        with MockApi(script()) as api:
            with self.assertRaises(ValueError):
                client(api).credits("")
            self.assertEqual(api.requests, [])

    def test_a_token_callback_is_asked_before_every_request(self):
        tokens = iter(["t1", "t2"])
        with MockApi(script()) as api:
            c = topup.Client(api.url, lambda: next(tokens))
            c.credits("acme")
            c.credits("acme")
            self.assertEqual([r.headers["authorization"] for r in api.requests], ["Bearer t1", "Bearer t2"])

    def test_purchase_sends_its_key_as_the_idempotency_key_header(self):
        with MockApi(script((201, {"purchase_id": "pur_1"}, {}))) as api:
            got = client(api).purchase("acme", amount=2000, idempotency_key="buy-1")
            self.assertEqual(got, {"purchase_id": "pur_1"})
            req = api.requests[0]
            self.assertEqual(req.headers["idempotency-key"], "buy-1")
            self.assertEqual(req.json(), {"amount": 2000})

    def test_set_entity_sends_only_what_is_given_and_null_for_none(self):
        with MockApi(script()) as api:
            c = client(api)
            c.set_entity("acme", "user:ann", monthly_limit=None)
            c.set_entity("acme", "user:ann", name="Ann")
            self.assertEqual([r.json() for r in api.requests], [{"monthly_limit": None}, {"name": "Ann"}])

    def test_the_csv_export_answers_text(self):
        csv = b"id,kind,amount,balance_after,created_at,description\n"
        with MockApi(script((200, csv, {"content-type": "text/csv; charset=utf-8"}))) as api:
            self.assertEqual(client(api).transactions_csv("acme"), csv.decode())


class Errors(unittest.TestCase):
    def test_a_402_is_a_topup_error_with_its_status_code_and_balance(self):
        with MockApi(script(error(402, "usage_limit_reached", "Out of credits.", balance=0))) as api:
            with self.assertRaises(topup.TopupError) as cm:
                client(api).debit("acme", "api_calls", 1)
            e = cm.exception
            self.assertEqual((e.status, e.code, e.message, e.balance), (402, "usage_limit_reached", "Out of credits.", 0))
            self.assertEqual(len(api.requests), 1, "a 402 is final: never retried")

    def test_final_statuses_are_not_retried(self):
        for status, code in ((400, "invalid_request"), (401, "unauthenticated"), (409, "idempotency_conflict"),
                             (422, "invalid_quantity"), (500, "internal")):
            with MockApi(script(error(status, code))) as api:
                with self.assertRaises(topup.TopupError) as cm:
                    client(api).debit("acme", "api_calls", 1)
                self.assertEqual((cm.exception.status, cm.exception.code), (status, code))
                self.assertEqual(len(api.requests), 1, status)

    def test_a_body_that_is_not_the_error_shape_still_gives_a_code(self):
        with MockApi(script((404, b"Not Found", {"content-type": "text/plain"}))) as api:
            with self.assertRaises(topup.TopupError) as cm:
                client(api).credits("acme")
            self.assertEqual((cm.exception.status, cm.exception.code), (404, "http_404"))

    def test_a_success_that_is_not_json_is_a_topup_error(self):
        with MockApi(script((200, b"<html>proxy</html>", {"content-type": "text/html"}))) as api:
            with self.assertRaises(topup.TopupError) as cm:
                client(api).credits("acme")
            self.assertEqual((cm.exception.status, cm.exception.code), (200, "invalid_response"))

    def test_no_server_is_a_connection_error_after_the_retries(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        c = topup.Client(f"http://127.0.0.1:{port}", "tok", max_retries=2, backoff=0.001)
        with self.assertRaises(topup.TopupError) as cm:
            c.credits("acme")
        self.assertEqual((cm.exception.status, cm.exception.code), (None, "connection_error"))


class Retries(unittest.TestCase):
    def test_429_503_and_a_dropped_connection_are_retried_with_the_same_key(self):
        with MockApi(script(error(429, "too_many_requests"), error(503, "account_busy"), None,
                            (200, {"balance": 1}, {}))) as api:
            c = client(api)
            self.assertEqual(c.debit("acme", "api_calls", 1), {"balance": 1})
            keys = [r.json()["idempotency_key"] for r in api.requests]
            self.assertEqual(len(keys), 4)
            self.assertEqual(len(set(keys)), 1, "one key across every retry")
            self.assertEqual(len(c.sleeps), 3)

    def test_a_purchase_keeps_its_generated_header_key_across_retries(self):
        with MockApi(script(error(503, "payment_provider_unavailable"), (201, {}, {}))) as api:
            client(api).purchase("acme")
            keys = [r.headers["idempotency-key"] for r in api.requests]
            self.assertEqual(len(keys), 2)
            self.assertEqual(keys[0], keys[1])

    def test_retry_after_in_seconds_is_honoured(self):
        with MockApi(script(error(503, "account_busy", headers={"Retry-After": "2"}))) as api:
            c = client(api)
            c.credits("acme")
            self.assertEqual(len(c.sleeps), 1)
            self.assertGreaterEqual(c.sleeps[0], 2.0)

    def test_retry_after_as_a_date_is_honoured_and_capped(self):
        later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
        with MockApi(script(error(429, "too_many_requests", headers={"Retry-After": later}),
                            error(429, "too_many_requests", headers={"Retry-After": "3600"}))) as api:
            c = client(api, max_retry_after=45)
            c.credits("acme")
            self.assertGreater(c.sleeps[0], 25)
            self.assertEqual(c.sleeps[1], 45, "capped at max_retry_after")

    def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(self):
        with MockApi(script(*[error(502, "upstream_unavailable")] * 5)) as api:
            c = client(api, backoff=1.0, max_backoff=4.0, max_retries=5)
            c.credits("acme")
            for delay, step in zip(c.sleeps, [1, 2, 4, 4, 4]):
                self.assertTrue(step / 2 <= delay <= step, (delay, step))

    def test_retries_stop_after_max_retries_with_the_last_error(self):
        with MockApi(script(*[error(503, "account_busy")] * 10)) as api:
            c = client(api, max_retries=2)
            with self.assertRaises(topup.TopupError) as cm:
                c.debit("acme", "api_calls", 1)
            self.assertEqual((cm.exception.status, cm.exception.code), (503, "account_busy"))
            self.assertEqual(len(api.requests), 3)

    def test_a_request_without_a_key_is_not_repeated_after_it_may_have_been_done(self):
        # Creating a webhook endpoint has no idempotency key: a 502 or a lost answer may mean it
        # was created, so it is not sent again; a 503 says nothing was done, so it is.
        with MockApi(script(error(502, "upstream_unavailable"))) as api:
            with self.assertRaises(topup.TopupError):
                client(api).create_webhook_endpoint("https://example.com/h", ["*"])
            self.assertEqual(len(api.requests), 1)
        with MockApi(script(None)) as api:
            with self.assertRaises(topup.TopupError) as cm:
                client(api).create_webhook_endpoint("https://example.com/h", ["*"])
            self.assertEqual(cm.exception.code, "connection_error")
            self.assertEqual(len(api.requests), 1)
        with MockApi(script(error(503, "account_busy"), (201, {"id": "we_1"}, {}))) as api:
            self.assertEqual(client(api).create_webhook_endpoint("https://example.com/h", ["*"]), {"id": "we_1"})
            self.assertEqual(len(api.requests), 2)


class Pages(unittest.TestCase):
    def test_iter_transactions_follows_next_cursor_to_the_end(self):
        pages = {None: ([1, 2], "c1"), "c1": ([3, 4], "c2"), "c2": ([5], None)}

        def handler(req):
            items, nxt = pages[req.query.get("cursor")]
            return 200, {"transactions": [{"id": f"tx_{i}"} for i in items], "next_cursor": nxt}, {}

        with MockApi(handler) as api:
            ids = [t["id"] for t in client(api).iter_transactions("acme", page_size=2, entity="user:ann")]
            self.assertEqual(ids, ["tx_1", "tx_2", "tx_3", "tx_4", "tx_5"])
            self.assertEqual([r.query.get("cursor") for r in api.requests], [None, "c1", "c2"])
            self.assertTrue(all(r.query["limit"] == "2" and r.query["entity"] == "user:ann" for r in api.requests))

    def test_iter_webhook_deliveries_pages_too(self):
        def handler(req):
            if req.query.get("cursor") == "n":
                return 200, {"deliveries": [{"id": "wd_2"}], "next_cursor": None}, {}
            return 200, {"deliveries": [{"id": "wd_1"}], "next_cursor": "n"}, {}

        with MockApi(handler) as api:
            got = [d["id"] for d in client(api).iter_webhook_deliveries("we_1", page_size=1)]
            self.assertEqual(got, ["wd_1", "wd_2"])
            self.assertEqual(api.requests[0].raw_path, "/v1/webhook-endpoints/we_1/deliveries")


class Batches(unittest.TestCase):
    def test_debit_batch_gives_each_event_without_a_key_its_own(self):
        with MockApi(script()) as api:
            client(api).debit_batch("acme", [{"consumable": "a", "quantity": 1},
                                             {"consumable": "a", "quantity": 2, "idempotency_key": "k2"},
                                             {"consumable": "a", "quantity": 3, "entity": None}])
            events = api.requests[0].json()["events"]
            self.assertEqual(events[1]["idempotency_key"], "k2")
            self.assertNotIn("entity", events[2])
            self.assertEqual(len({e["idempotency_key"] for e in events}), 3)


if __name__ == "__main__":
    unittest.main()
