"""moto in server mode, one request at a time.

moto's DynamoDB checks a transaction's conditions and then applies it, and on a cancelled
transaction restores a snapshot of the whole table; its threaded server runs requests
concurrently, so two concurrent transactions can both pass `version = :v`, and a cancelled
one can roll back another's committed write. Real DynamoDB serializes conflicting writes.
This launcher keeps moto's own app and request handler and wraps the app in a lock, so each
request is atomic, as it is against DynamoDB.

It also changes how moto undoes a cancelled TransactWriteItems: moto deep-copies every table a
transaction touches before applying it (82% of a transaction's time in a profile, growing with
the table), and swaps the copy back on cancellation. Here the copy is skipped and only the
items the transaction names are saved and put back, which is the same outcome while requests
are serialized.

And a Query of the table (not of an index) reads only its partition, as DynamoDB's does: moto
walks every item of the table for each Query, so a read of one account cost the whole table's
size (a page of the console, rules §19, slowed with the table's other items, not its own). The
items it considers, and so its answer, are the same.

Nothing else about moto changes.

Usage: python moto_serial.py PORT
"""

import copy
import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def undo_only_touched_items() -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    state = {"in_transaction": False}

    def table_deepcopy(self, memo):
        if state["in_transaction"]:
            return self  # moto's whole-table backup; the touched items are saved instead
        cls = self.__class__
        result = cls.__new__(cls)
        memo[id(self)] = result
        for k, v in self.__dict__.items():
            setattr(result, k, copy.deepcopy(v, memo))
        return result

    Table.__deepcopy__ = table_deepcopy
    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        saved = []
        for item in transact_items:
            try:
                op_type, op = next(iter(item.items()))
                table = self.get_table(op["TableName"])
                if op_type == "Put":
                    attrs = op["Item"]
                    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = attrs[table.range_key_attr]
                else:
                    key = op["Key"]
                h, r = self.get_keys_value(table, key)
                saved.append((table, h, r, copy.deepcopy(table.get_item(h, r))))
            except Exception:
                pass  # malformed: moto's own validation answers as before
        state["in_transaction"] = True
        try:
            return original(self, transact_items)
        except Exception:
            for table, h, r, old in reversed(saved):
                table.delete_item(h, r)
                if old is not None:
                    if r is not None:
                        table.items[h][r] = old
                    else:
                        table.items[h] = old
            raise
        finally:
            state["in_transaction"] = False

    DynamoDBBackend.transact_write_items = transact_write_items


def partition_queries() -> None:
    import inspect

    from moto.dynamodb.models.table import Table

    original = Table.query
    signature = inspect.signature(original)

    def query(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        hash_key = bound.arguments.get("hash_key")
        if bound.arguments.get("index_name") or hash_key is None or self.range_key_attr is None:
            return original(self, *args, **kwargs)
        partition = self.items[hash_key] if hash_key in self.items else {}
        self.all_items = lambda: iter(list(partition.values()))
        try:
            return original(self, *args, **kwargs)
        finally:
            del self.all_items

    Table.query = query


def main() -> None:
    undo_only_touched_items()
    partition_queries()
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            body = app(environ, start_response)
            try:
                # Drain inside the lock: the response is fully computed before the next request.
                return [b"".join(body)]
            finally:
                close = getattr(body, "close", None)
                if close:
                    close()

    run_simple("127.0.0.1", port, serialized, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
