"""`DebitBatcher` against a scripted batch endpoint: batches of at most `max_batch` per account,
sent after `max_wait`, each caller with its own result."""

import threading
import time
import unittest

import topup
from mockapi import MockApi, error, script


def batch_api(refuse=()):
    """A batch endpoint that applies every event (balance = its quantity) but those whose key is
    in `refuse`, which are 402 `out_of_credits`; answers in reverse order (matching is by key)."""
    def handler(req):
        results = []
        for e in req.json()["events"]:
            if e["idempotency_key"] in refuse:
                results.append({"idempotency_key": e["idempotency_key"], "status": 402, "replayed": False,
                                "error": {"code": "out_of_credits", "message": "Out.", "balance": 0}})
            else:
                results.append({"idempotency_key": e["idempotency_key"], "status": 200, "replayed": False,
                                "balance": e["quantity"], "from_credits": e["quantity"], "from_allowance": 0,
                                "transaction_id": "tx_" + e["idempotency_key"]})
        return 200, {"results": results[::-1]}, {}
    return handler


def client(api):
    c = topup.Client(api.url, "tok", backoff=0.001)
    c._sleep = lambda s: None
    return c


class Batching(unittest.TestCase):
    def test_many_threads_get_their_own_results_in_batches_of_at_most_fifty(self):
        with MockApi(batch_api(refuse={"k-7"})) as api, topup.DebitBatcher(client(api)) as batcher:
            out, lock = {}, threading.Lock()

            def worker(w):
                for i in range(w * 12, w * 12 + 12):
                    try:
                        r = batcher.debit("acme", "api_calls", i, idempotency_key=f"k-{i}")
                        got = (r["status"], r["balance"], r["transaction_id"])
                    except topup.TopupError as e:
                        got = (e.status, e.code)
                    with lock:
                        out[i] = got

            threads = [threading.Thread(target=worker, args=(w,)) for w in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(len(out), 120)
            for i in range(120):
                self.assertEqual(out[i], (402, "out_of_credits") if i == 7 else (200, i, f"tx_k-{i}"))
            sizes = [len(r.json()["events"]) for r in api.requests]
            self.assertEqual(sum(sizes), 120)
            self.assertTrue(all(s <= 50 for s in sizes), sizes)
            self.assertLess(len(sizes), 120, "grouped, not one request per debit")

    def test_a_full_batch_goes_at_once_and_the_rest_after_max_wait(self):
        with MockApi(batch_api()) as api:
            batcher = topup.DebitBatcher(client(api), max_batch=3, max_wait=0.2)
            futures = [batcher.submit("acme", "api_calls", i) for i in range(4)]
            for f in futures[:3]:
                f.result(timeout=5)
            self.assertEqual([len(r.json()["events"]) for r in api.requests], [3])
            self.assertFalse(futures[3].done(), "the fourth waits for max_wait")
            started = time.monotonic()
            futures[3].result(timeout=5)
            self.assertLess(time.monotonic() - started, 1.0)
            self.assertEqual([len(r.json()["events"]) for r in api.requests], [3, 1])
            batcher.close()

    def test_accounts_are_batched_apart(self):
        with MockApi(batch_api()) as api, topup.DebitBatcher(client(api), max_wait=0.05) as batcher:
            a = batcher.submit("acme", "api_calls", 1)
            b = batcher.submit("beta", "api_calls", 2)
            self.assertEqual((a.result(5)["balance"], b.result(5)["balance"]), (1, 2))
            self.assertEqual(sorted(r.raw_path for r in api.requests),
                             ["/v1/accounts/acme/usage/batch", "/v1/accounts/beta/usage/batch"])

    def test_a_retried_batch_keeps_every_key(self):
        inner = batch_api()
        answers = script(error(503, "account_busy"))

        def handler(req):
            first = answers(req)
            return first if first[0] != 200 else inner(req)

        with MockApi(handler) as api, topup.DebitBatcher(client(api)) as batcher:
            f = [batcher.submit("acme", "api_calls", i) for i in range(3)]
            self.assertEqual([x.result(5)["balance"] for x in f], [0, 1, 2])
            sent = [[e["idempotency_key"] for e in r.json()["events"]] for r in api.requests]
            self.assertEqual(len(sent), 2)
            self.assertEqual(sent[0], sent[1])

    def test_a_refused_batch_fails_every_caller_in_it(self):
        with MockApi(script(error(400, "invalid_request", "bad"))) as api, topup.DebitBatcher(client(api)) as batcher:
            f = [batcher.submit("acme", "api_calls", 1) for _ in range(2)]
            for x in f:
                with self.assertRaises(topup.TopupError) as cm:
                    x.result(5)
                self.assertEqual((cm.exception.status, cm.exception.code), (400, "invalid_request"))

    def test_a_reply_that_does_not_match_the_batch_fails_it(self):
        with MockApi(script((200, {"results": [{"idempotency_key": "other", "status": 200}]}, {}))) as api:
            with topup.DebitBatcher(client(api)) as batcher:
                with self.assertRaises(topup.TopupError) as cm:
                    batcher.debit("acme", "api_calls", 1)
                self.assertEqual(cm.exception.code, "bad_reply")

    def test_flush_sends_now_and_close_refuses_more(self):
        with MockApi(batch_api()) as api:
            batcher = topup.DebitBatcher(client(api), max_wait=30)
            f = batcher.submit("acme", "api_calls", 5)
            batcher.flush()
            self.assertTrue(f.done())
            self.assertEqual(f.result()["balance"], 5)
            batcher.close()
            self.assertFalse(batcher._timer.is_alive(), "close ends the timer thread")
            with self.assertRaises(topup.TopupError) as cm:
                batcher.submit("acme", "api_calls", 1)
            self.assertEqual(cm.exception.code, "batcher_closed")


if __name__ == "__main__":
    unittest.main()
