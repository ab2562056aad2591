"""The API router of the local stack: serves the HTTP routes that infra/template.yaml declares
(HttpApi events) and forwards each request to its function under `cargo lambda watch`
(`/lambda-url/<binary>/<path>`), so `curl http://127.0.0.1:9000/v1/...` works as behind API
Gateway. Routes are read from the template, so the two cannot drift.
"""

import json
import pathlib
import re
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml  # PyYAML, installed with cfn-lint


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short forms (!Ref, !Sub, !GetAtt) as plain values."""


def _any_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)


_CfnLoader.add_multi_constructor("!", _any_tag)


def function_events(path: pathlib.Path, event_type: str):
    """(binary, event name, properties) for every `event_type` event of a function in the
    template; the binary is the function's `BuildProperties.Binary`."""
    doc = yaml.load(path.read_text(), Loader=_CfnLoader)
    for res in doc.get("Resources", {}).values():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        binary = res.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        for name, ev in res.get("Properties", {}).get("Events", {}).items():
            if ev.get("Type") == event_type and binary:
                yield binary, name, ev["Properties"]


def routes_from_template(path: pathlib.Path) -> list[tuple[str, re.Pattern, str, str]]:
    """[(method, regex, binary, template path)] for every HttpApi event in the template."""
    out = []
    for binary, _, props in function_events(path, "HttpApi"):
        p = props["Path"]
        rx = re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", p) + "$")
        out.append((props["Method"].upper(), rx, binary, p))
    return out


class Router:
    def __init__(self, template: pathlib.Path, upstream: str) -> None:
        self.routes = routes_from_template(template)
        self.upstream = upstream.rstrip("/")
        self.server: ThreadingHTTPServer | None = None


    def match(self, method: str, path: str) -> tuple[str | None, bool]:
        """(binary, path known under another method)."""
        other = False
        for m, rx, binary, _ in self.routes:
            if rx.match(path):
                if m == method:
                    return binary, False
                other = True
        return None, other

    def serve(self, host: str, port: int) -> None:
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet; cargo lambda logs each invocation
                pass

            def _answer(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                path, _, query = self.path.partition("?")
                binary, other = router.match(self.command, path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                if binary is None:
                    code, status = ("method_not_allowed", 405) if other else ("route_not_found", 404)
                    payload = json.dumps({"error": {"code": code, "message": "No such route."}}).encode()
                    self._answer(status, payload, {"content-type": "application/json"})
                    return
                url = f"{router.upstream}/lambda-url/{binary}{path}" + (f"?{query}" if query else "")
                req = urllib.request.Request(url, data=body, method=self.command)
                for k in ("authorization", "content-type", "idempotency-key", "stripe-signature"):
                    if self.headers.get(k):
                        req.add_header(k, self.headers[k])
                # cargo lambda watch 1.9.2 now and then answers a request with a 500 of its own
                # or never answers, though the function handled it (seen about once in a few
                # hundred GETs of the 27 kB billing page, never on a JSON route). A GET changes
                # nothing, so it is tried again; other methods are never repeated.
                attempts = 3 if self.command == "GET" else 1
                try:
                    for attempt in range(attempts):
                        last = attempt == attempts - 1
                        try:
                            with urllib.request.urlopen(req, timeout=60 if last else 10) as r:
                                status, payload, headers = r.status, r.read(), dict(r.headers)
                            break
                        except urllib.error.HTTPError as e:
                            status, payload, headers = e.code, e.read(), dict(e.headers)
                            if status != 500 or last:
                                break
                        except (TimeoutError, urllib.error.URLError):
                            if last:
                                raise
                    self._answer(status, payload, headers)
                except Exception:
                    payload = json.dumps({"error": {"code": "upstream_unavailable", "message": "The function is not reachable."}}).encode()
                    self._answer(502, payload, {"content-type": "application/json"})

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        self.server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def shutdown(self) -> None:
        forwarder = getattr(self, "forwarder", None)
        if forwarder:
            forwarder.stop()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
