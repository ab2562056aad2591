"""`DebitBatcher`: single debits from many threads, sent as batches (like the Rust client's
`Batcher`, client/src/lib.rs).

Debits are grouped per account; an account's batch is sent when `max_batch` debits wait (50 by
default) or `max_wait` has passed since its first one (5 ms), through
`POST /v1/accounts/{id}/usage/batch`. Each caller gets its own event's result, matched by
idempotency key. A batch is retried as a whole by the client (429, 5xx, network errors): every
event carries its own key, so events already applied answer `replayed: true` and are never
charged twice.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, List, Optional, Tuple

from .client import Client, new_idempotency_key
from .errors import TopupError

#: The most events the API takes in one batch.
MAX_BATCH = 500

_Item = Tuple[Dict[str, Any], "Future[Dict[str, Any]]"]


class DebitBatcher:
    """Batches single debits per account. Thread-safe; use one per process, and `close()` it (or
    use it in a `with` block) so that what waits is sent.

    `debit()` blocks until its own result and answers it like `Client.debit` (`from_allowance`,
    `from_credits`, `balance`, `transaction_id`, plus `replayed`), or raises `TopupError` with
    the status and code the event was refused with (402, 409, 422), or the batch's error.
    `submit()` answers a `concurrent.futures.Future` instead.
    """

    def __init__(self, client: Client, *, max_batch: int = 50, max_wait: float = 0.005, max_in_flight: int = 4) -> None:
        self.client = client
        self.max_batch = max(1, min(MAX_BATCH, max_batch))
        self.max_wait = max(0.0, max_wait)
        self._lock = threading.Condition()
        self._waiting: Dict[str, List[_Item]] = {}
        self._due: Dict[str, float] = {}
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_in_flight), thread_name_prefix="topup-batch")
        self._in_flight: "set[Future[None]]" = set()
        self._timer = threading.Thread(target=self._run, name="topup-batcher", daemon=True)
        self._timer.start()

    def submit(self, account_id: str, consumable: str, quantity: int, idempotency_key: Optional[str] = None,
               entity: Optional[str] = None) -> "Future[Dict[str, Any]]":
        """Queues one debit in its account's next batch; the future answers its result."""
        if not account_id or not consumable:
            raise ValueError("account_id and consumable must not be empty")
        event: Dict[str, Any] = {"consumable": consumable, "quantity": quantity,
                                 "idempotency_key": idempotency_key or new_idempotency_key()}
        if entity is not None:
            event["entity"] = entity
        future: "Future[Dict[str, Any]]" = Future()
        with self._lock:
            if self._closed:
                raise TopupError(None, "batcher_closed", "The batcher is closed.")
            batch = self._waiting.setdefault(account_id, [])
            batch.append((event, future))
            if len(batch) >= self.max_batch:
                self._send(account_id)
            elif len(batch) == 1:
                self._due[account_id] = time.monotonic() + self.max_wait
                self._lock.notify()
        return future

    def debit(self, account_id: str, consumable: str, quantity: int, idempotency_key: Optional[str] = None,
              entity: Optional[str] = None) -> Dict[str, Any]:
        """Debits in the account's next batch and waits for this event's result."""
        return self.submit(account_id, consumable, quantity, idempotency_key, entity).result()

    def flush(self) -> None:
        """Sends every waiting debit now and returns once those batches are answered."""
        with self._lock:
            for account in list(self._waiting):
                self._send(account)
            pending = list(self._in_flight)
        for f in pending:
            f.result()

    def close(self) -> None:
        """Refuses new debits, sends what waits and returns once every batch is answered."""
        with self._lock:
            self._closed = True
            for account in list(self._waiting):
                self._send(account)
            self._lock.notify()  # the timer thread sees nothing waits, and ends
        self.flush()
        self._pool.shutdown(wait=True)
        self._timer.join(timeout=5)

    def __enter__(self) -> "DebitBatcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- inside ---------------------------------------------------------------------------------

    def _run(self) -> None:
        """Sends each account's batch when its first debit has waited `max_wait`."""
        with self._lock:
            while not (self._closed and not self._waiting):
                now = time.monotonic()
                for account in [a for a, due in self._due.items() if due <= now]:
                    self._send(account)
                if self._closed and not self._waiting:
                    break
                wait = min(self._due.values()) - now if self._due else None
                self._lock.wait(timeout=wait if wait is None or wait > 0 else 0)

    def _send(self, account: str) -> None:
        """Hands the account's waiting batch to the pool (the lock is held)."""
        batch = self._waiting.pop(account, [])
        self._due.pop(account, None)
        if not batch:
            return
        f = self._pool.submit(self._deliver, account, batch)
        self._in_flight.add(f)
        f.add_done_callback(self._done)

    def _done(self, f: "Future[None]") -> None:
        with self._lock:
            self._in_flight.discard(f)

    def _deliver(self, account: str, batch: List[_Item]) -> None:
        try:
            reply = self.client.debit_batch(account, [event for event, _ in batch])
            results = _match(reply, [event["idempotency_key"] for event, _ in batch])
        except TopupError as e:
            for _, future in batch:
                future.set_exception(e)
            return
        except Exception as e:  # the caller waits on its future: it must hear of anything
            for _, future in batch:
                future.set_exception(TopupError(None, "batch_failed", repr(e)))
            return
        for (_, future), result in zip(batch, results):
            if result.get("status") == 200:
                future.set_result(result)
            else:
                error = result.get("error") if isinstance(result.get("error"), dict) else {}
                future.set_exception(TopupError(result.get("status"), str(error.get("code", "refused")),
                                                str(error.get("message", "")), result))


def _match(reply: Any, keys: List[str]) -> List[Dict[str, Any]]:
    """The results in the batch's order, matched by idempotency key (the n-th event with a key
    takes the n-th result with it); any mismatch fails the whole reply."""
    results = reply.get("results") if isinstance(reply, dict) else None
    if not isinstance(results, list) or len(results) != len(keys):
        raise TopupError(None, "bad_reply", f"{len(results) if isinstance(results, list) else 'no'} results for {len(keys)} events")
    by_key: Dict[str, Deque[Dict[str, Any]]] = defaultdict(deque)
    for r in results:
        by_key[str(r.get("idempotency_key"))].append(r)
    out = []
    for k in keys:
        if not by_key[k]:
            raise TopupError(None, "bad_reply", f"no result for idempotency key {k!r}")
        out.append(by_key[k].popleft())
    return out
