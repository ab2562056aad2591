"""`<topup-credits>` in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright), on
an app's page of another origin than the API's: a host page on 127.0.0.1:<allowed port> (listed in
the served stack's TOPUP_ALLOWED_ORIGINS, as the template's AllowedOrigins) loads the script the
API serves at /billing/topup-credits.js and shows the account's balance and allowance; a page on
another port, not listed, is refused by CORS (the script, and the card's own call to the API
when it bundles the package's card itself).

Run by tests/sdks/clients.py inside the sdks phase of `./scripts/test`, which serves the stack
with the allowed origin. Screenshots go to `.local/screenshots/`.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from billing_test import CHROMIUM, CHROMIUM_ARGS

HOST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Acme settings</title>
<style>body {{ font-family: system-ui; background: #f5f5f5; padding: 24px; }} main {{ max-width: 560px; }}</style>
</head><body><main>
<h1>Acme: your plan</h1>
<script>window.getTopupToken = () => {token};</script>
<script type="module" src="{script}"></script>
<topup-credits id="card" token-callback="getTopupToken"{attrs}></topup-credits>
</main></body></html>
"""


class HostPage:
    """An app's page on 127.0.0.1:`port`: `/` is HOST_PAGE, `/card.js` the package's built card
    (as an app that bundles @topup/client/card serves it from its own origin)."""

    def __init__(self, port: int, page: str, card_js: bytes) -> None:
        files = {"/": (page.encode(), "text/html; charset=utf-8"), "/card.js": (card_js, "text/javascript; charset=utf-8")}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body, kind = files.get(self.path, (b"not found", "text/plain"))
                self.send_response(200 if self.path in files else 404)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(api, owner_token, allowed_port, other_port, card_js, expect, checks, shots):
    """`expect`: the balance text and the api_calls allowance text the card should show."""
    import json

    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    served = f"{api}/billing/topup-credits.js"
    allowed = HostPage(allowed_port, HOST_PAGE.format(token=json.dumps(owner_token), script=served, attrs=""), card_js)
    # The other origin bundles the card itself (from its own origin), so the element exists and
    # the refusal shown is the API call's.
    other = HostPage(other_port, HOST_PAGE.format(token=json.dumps(owner_token), script="/card.js",
                                                  attrs=f' api-base="{api}"'), card_js)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 700, "height": 600})
                console = []
                page.on("console", lambda m: console.append(m.text))
                page.goto(allowed.url)
                page.wait_for_selector("topup-credits[data-state=ready]", timeout=20_000)
                balance = page.locator("topup-credits #balance").inner_text()
                allowance = page.locator("topup-credits .allowance[data-consumable=api_calls]").inner_text()
                checks.check("card: a host page on another port (an allowed origin) loads /billing/topup-credits.js "
                             "and shows the balance and allowance",
                             balance == expect["balance"] and expect["allowance"] in allowance.replace("\n", " "),
                             f"{balance!r} {allowance!r} {console[-5:]}")
                page.screenshot(path=str(shots / "topup-credits-card.png"), full_page=True)
                origin_header = page.evaluate(
                    "async (u) => { const r = await fetch(u); return r.headers.get('content-type'); }", served)
                checks.check("card: the allowed origin may fetch the script (CORS)", "javascript" in (origin_header or ""),
                             origin_header)

                page2 = browser.new_page()
                console2 = []
                page2.on("console", lambda m: console2.append(m.text))
                page2.goto(other.url)
                page2.wait_for_selector("topup-credits[data-state=error]", timeout=20_000)
                code = page2.get_attribute("topup-credits", "data-error-code")
                shown = page2.locator("topup-credits #error").inner_text()
                cors = [m for m in console2 if "CORS" in m]
                checks.check("card: an origin not configured is refused by CORS (the card shows its error, no balance)",
                             code == "connection_error" and not page2.locator("topup-credits #balance").inner_text()
                             and bool(cors), f"{code} {shown!r} {console2[-5:]}")
                refused = page2.evaluate(
                    "async (u) => { try { await fetch(u); return 'loaded'; } catch (e) { return 'refused'; } }", served)
                checks.check("card: an origin not configured cannot load the served script either", refused == "refused", refused)
                page2.screenshot(path=str(shots / "topup-credits-refused.png"), full_page=True)
            finally:
                browser.close()
    finally:
        allowed.close()
        other.close()
