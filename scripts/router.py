"""The API router of the local stack: serves the HTTP routes that infra/template.yaml declares
(HttpApi events) and forwards each request to its function under `cargo lambda watch`
(`/lambda-url/<binary>/<path>`), so `curl http://127.0.0.1:9000/v1/...` works as behind API
Gateway. Routes are read from the template, so the two cannot drift.
"""

import base64
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


def cors_from_template(path: pathlib.Path) -> dict:
    """The HTTP API's `CorsConfiguration` in the template (methods, headers, max age), whatever
    condition wraps it; its origins are the `AllowedOrigins` parameter's, given to the Router."""
    doc = yaml.load(path.read_text(), Loader=_CfnLoader)
    for res in doc.get("Resources", {}).values():
        if res.get("Type") == "AWS::Serverless::HttpApi":
            cors = res.get("Properties", {}).get("CorsConfiguration")
            if isinstance(cors, dict) and "Fn::If" in cors:  # [condition, {…}, AWS::NoValue]
                cors = cors["Fn::If"]
            for c in (cors if isinstance(cors, list) else [cors]):
                if isinstance(c, dict):
                    return c
    return {}


def routes_from_template(path: pathlib.Path) -> list[tuple[str, re.Pattern, str, str]]:
    """[(method, regex, binary, template path)] for every HttpApi event in the template."""
    out = []
    for binary, _, props in function_events(path, "HttpApi"):
        p = props["Path"]
        rx = re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", p) + "$")
        out.append((props["Method"].upper(), rx, binary, p))
    return out


# Requests forwarded to the functions at once (the rest wait in the router).
UPSTREAM_AT_ONCE = 4


class CrowdServer(ThreadingHTTPServer):
    """Takes a crowd as API Gateway does: a listen backlog of 1,024 (the standard library's
    default of 5 refuses or resets connections when some 30 clients connect at once), a thread
    per connection, and threads that never hold up shutdown."""

    request_queue_size = 1024
    daemon_threads = True


class Router:
    def __init__(self, template: pathlib.Path, upstream: str, allowed_origins: str = "") -> None:
        self.routes = routes_from_template(template)
        # CORS as API Gateway answers it with the template's CorsConfiguration: for the origins of
        # `AllowedOrigins` (here TOPUP_ALLOWED_ORIGINS, comma-separated) only; none by default.
        self.cors = cors_from_template(template)
        self.origins = {o.strip().rstrip("/") for o in (allowed_origins or "").split(",") if o.strip()}
        self.upstream = upstream.rstrip("/")
        self.server: ThreadingHTTPServer | None = None
        # At most this many requests are with the functions at once; a crowd waits here, as
        # API Gateway holds requests while Lambda scales. `cargo lambda watch` wedges when
        # some 200 invocations reach it at once, and a queue behind it would outlast the
        # 8-second wait below and be sent again.
        self.gate = threading.BoundedSemaphore(UPSTREAM_AT_ONCE)


    def match(self, method: str, path: str) -> tuple[str | None, list[str]]:
        """(binary, the methods the path is served with)."""
        allowed = []
        for m, rx, binary, _ in self.routes:
            if rx.match(path):
                if m == method:
                    return binary, [m]
                allowed.append(m)
        return None, allowed

    def serve(self, host: str, port: int) -> None:
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet; cargo lambda logs each invocation
                pass

            def _answer(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    # A function's own CORS headers are ignored, as API Gateway ignores them.
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server") \
                            and not k.lower().startswith("access-control-"):
                        self.send_header(k, v)
                for k, v in self._cors_headers().items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _invoke(self, binary: str, path: str, query: str, body: bytes) -> tuple[int, bytes, dict]:
                """The request as API Gateway hands it to the function (HTTP API, payload 2.0), through
                cargo lambda's invoke API. Used for a body that is not UTF-8, which API Gateway
                passes base64-encoded and cargo lambda watch's URL route cannot pass at all."""
                headers = {k.lower(): v for k, v in self.headers.items()}
                event = {
                    "version": "2.0", "routeKey": f"{self.command} {path}", "rawPath": path, "rawQueryString": query,
                    "headers": headers, "body": base64.b64encode(body).decode(), "isBase64Encoded": True,
                    "requestContext": {"http": {"method": self.command, "path": path, "protocol": "HTTP/1.1",
                                                "sourceIp": "127.0.0.1", "userAgent": headers.get("user-agent", "")},
                                       "requestId": "local", "routeKey": f"{self.command} {path}", "stage": "$default",
                                       "accountId": "123456789012", "apiId": "local", "domainName": "127.0.0.1",
                                       "domainPrefix": "local", "time": "", "timeEpoch": 0},
                }
                req = urllib.request.Request(f"{router.upstream}/2015-03-31/functions/{binary}/invocations",
                                             data=json.dumps(event).encode(), method="POST")
                with urllib.request.urlopen(req, timeout=60) as r:
                    reply = json.loads(r.read())
                out = reply.get("body") or ""
                payload = base64.b64decode(out) if reply.get("isBase64Encoded") else out.encode()
                return reply.get("statusCode", 200), payload, reply.get("headers") or {}

            def _cors_headers(self) -> dict:
                """What API Gateway adds to an answer for an allowed origin (nothing for another)."""
                origin = self.headers.get("origin")
                if not origin or origin not in router.origins:
                    return {}
                out = {"access-control-allow-origin": origin, "vary": "origin"}
                if router.cors.get("ExposeHeaders"):
                    out["access-control-expose-headers"] = ", ".join(router.cors["ExposeHeaders"])
                return out

            def _preflight(self) -> bool:
                """Answers a CORS preflight as API Gateway does once CORS is configured (without
                the authorizer or a function): 204, with the CORS headers only for an allowed
                origin and method. Without configured origins it is an ordinary request."""
                if not (router.origins and self.command == "OPTIONS" and self.headers.get("origin")
                        and self.headers.get("access-control-request-method")):
                    return False
                headers = {}
                methods = [m.upper() for m in router.cors.get("AllowMethods", [])]
                if self.headers.get("access-control-request-method", "").upper() in methods:
                    headers = self._cors_headers()
                    if headers:
                        headers.pop("access-control-expose-headers", None)
                        headers["access-control-allow-methods"] = ", ".join(methods)
                        headers["access-control-allow-headers"] = ", ".join(router.cors.get("AllowHeaders", []))
                        if router.cors.get("MaxAge") is not None:
                            headers["access-control-max-age"] = str(router.cors["MaxAge"])
                self.send_response(204)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()
                return True

            def _forward(self) -> None:
                if self._preflight():
                    return
                path, _, query = self.path.partition("?")
                binary, allowed = router.match(self.command, path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                if binary is None:
                    if allowed:
                        error = {"code": "method_not_allowed", "message": f"This route does not accept {self.command}."}
                        headers = {"content-type": "application/json", "allow": ", ".join(sorted(set(allowed)))}
                        self._answer(405, json.dumps({"error": error}).encode(), headers)
                    else:
                        error = {"code": "route_not_found", "message": "No such route."}
                        self._answer(404, json.dumps({"error": error}).encode(), {"content-type": "application/json"})
                    return
                if body is not None:
                    try:
                        body.decode("utf-8")
                    except UnicodeDecodeError:
                        try:
                            self._answer(*self._invoke(binary, path, query, body))
                        except Exception:
                            payload = json.dumps({"error": {"code": "upstream_unavailable", "message": "The function is not reachable."}}).encode()
                            self._answer(502, payload, {"content-type": "application/json"})
                        return
                url = f"{router.upstream}/lambda-url/{binary}{path}" + (f"?{query}" if query else "")
                req = urllib.request.Request(url, data=body, method=self.command)
                for k in ("authorization", "content-type", "idempotency-key", "stripe-signature"):
                    if self.headers.get(k) is not None:  # an empty value too: the function judges it
                        req.add_header(k, self.headers[k])
                # cargo lambda watch 1.9.2 now and then answers a request with a 500 of its own
                # (its problem+json body) or never answers, though the function handled it: about
                # one request in several hundred, on any route. The request is sent again. Every
                # route of this API may be repeated by its own contract (idempotency keys, PUT and
                # DELETE, exactly-once payments); a repeated purchase or card setup without a key
                # makes one more pending record, which moves no money. A 500 of the function
                # itself (the webhook's "Stripe, retry") is passed on, never repeated here.
                attempts = 3
                router.gate.acquire()
                try:
                    for attempt in range(attempts):
                        last = attempt == attempts - 1
                        try:
                            with urllib.request.urlopen(req, timeout=60 if last else 8) as r:
                                status, payload, headers = r.status, r.read(), dict(r.headers)
                            break
                        except urllib.error.HTTPError as e:
                            status, payload, headers = e.code, e.read(), dict(e.headers)
                            if status != 500 or b"httpstatuses.com/500" not in payload or last:
                                break
                        except (TimeoutError, urllib.error.URLError):
                            if last:
                                raise
                    self._answer(status, payload, headers)
                except Exception:
                    payload = json.dumps({"error": {"code": "upstream_unavailable", "message": "The function is not reachable."}}).encode()
                    self._answer(502, payload, {"content-type": "application/json"})
                finally:
                    router.gate.release()

            # Every method, even made-up ones: a known path answers 405 (with `Allow`) for one it
            # does not serve, as API Gateway would, and an unknown path 404.
            def __getattr__(self, name: str):
                if name.startswith("do_"):
                    return self._forward
                raise AttributeError(name)

        self.server = CrowdServer((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def shutdown(self) -> None:
        forwarder = getattr(self, "forwarder", None)
        if forwarder:
            forwarder.stop()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
