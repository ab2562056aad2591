"""moto in server mode, one request at a time.

moto's DynamoDB checks a transaction's conditions and then applies it, and on a cancelled
transaction restores a snapshot of the whole table; its threaded server runs requests
concurrently, so two concurrent transactions can both pass `version = :v`, and a cancelled
one can roll back another's committed write. Real DynamoDB serializes conflicting writes.
This launcher keeps moto's own app and request handler and wraps the app in a lock, so each
request is atomic, as it is against DynamoDB. Nothing else about moto changes.

Usage: python moto_serial.py PORT
"""

import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def main() -> None:
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
