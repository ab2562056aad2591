"""A scripted HTTP server on 127.0.0.1 for the client's tests: records every request and answers
each with what `handler(request)` returns, `(status, body, headers)`, or `None` to drop the
connection without an answer (a network error)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit


class Request:
    def __init__(self, method: str, target: str, headers: Dict[str, str], body: bytes) -> None:
        self.method = method
        parts = urlsplit(target)
        self.raw_path = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Answer = Optional[Tuple[int, Any, Dict[str, str]]]


class MockApi:
    def __init__(self, handler: Callable[[Request], Answer]) -> None:
        self.handler = handler
        self.requests: List[Request] = []
        self.lock = threading.Lock()
        me = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with me.lock:
                    me.requests.append(req)
                answer = me.handler(req)
                if answer is None:  # no answer: the connection just closes
                    self.close_connection = True
                    return
                status, payload, headers = answer
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", headers.pop("content-type", "application/json"))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "MockApi":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def script(*answers: Answer) -> Callable[[Request], Answer]:
    """Answers the requests with these in turn, then 200 `{}`."""
    queue = list(answers)
    lock = threading.Lock()

    def handler(_req: Request) -> Answer:
        with lock:
            if queue:
                a = queue.pop(0)
                return None if a is None else (a[0], a[1], dict(a[2]))
        return 200, {}, {}

    return handler


def error(status: int, code: str, message: str = "", **extra: Any) -> Tuple[int, Any, Dict[str, str]]:
    headers = extra.pop("headers", {})
    body = {"error": {"code": code, "message": message or code}}
    body.update(extra)
    return status, body, headers
