"""The console for staff (rules §19) in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright), against the served local stack: each page, and each action (an adjustment, a void,
a refund, a redelivery) with its confirm step and reason, checking the ledger and the audit log
after each; support's limits; and how long an account with 10,000 ledger entries takes to show.

Run by `./scripts/test` (and `.venv/bin/python scripts/stack.py browser`) through
tests/e2e/end_to_end.py's `browser_tests`, on the voice-minutes stack the billing page's tests
use. Screenshots go to `.local/screenshots/` (the ones in docs/ are copies of them).
"""

import json
import socket
import time
import urllib.parse
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
C = 1_000_000
# How many ledger entries the account whose page is timed has, and the page's budget.
BIG_LEDGER = 10_000
BUDGET_MS = 1000


def wait_until(what, fn, timeout=30.0, every=0.3):
    """`fn()` until it returns something true; that value (raises, naming `what`, after `timeout`)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stripe_post(stripe, path, form=None):
    data = urllib.parse.urlencode(form or {}).encode()
    req = urllib.request.Request(stripe.rstrip("/") + path, data=data, method="POST",
                                 headers={"authorization": "Bearer sk_test_local_stack"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def run(api, stripe, token_for, http, checks, shots):
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    svc = token_for("service", None)
    finance, support = token_for("finance", None), token_for("support", None)
    acct = f"console-co-{int(time.time())}"
    email = f"billing@{acct}.example.com"

    # ---- the account's history, made through the API ------------------------------------------
    s, b = http("PUT", f"{api}/v1/accounts/{acct}", svc, {"plan": "pro", "billing_contacts": [{"email": email}]})
    assert s == 201, (s, b)
    hook = f"http://127.0.0.1:{closed_port()}/hook"
    s, ep = http("POST", f"{api}/v1/webhook-endpoints", svc, {"url": hook, "events": ["*"], "reason": "console test receiver"})
    assert s == 201, (s, ep)
    s, b = http("POST", f"{api}/v1/accounts/{acct}/credits/adjustments", svc,
                {"amount": 40 * C, "reason": "welcome minutes", "idempotency_key": "welcome"})
    assert s == 201, (s, b)
    s, grants = http("GET", f"{api}/v1/accounts/{acct}/credits/grants", svc)
    welcome = grants["grants"][0]["id"]
    # A purchase of one block, paid in the local Stripe (its signed event reaches the webhook).
    owner = token_for("owner", acct)
    s, bought = http("POST", f"{api}/v1/accounts/{acct}/credits/purchases", owner, {"blocks": 1},
                     headers={"idempotency-key": f"{acct}-buy"})
    assert s == 201, (s, bought)
    stripe_post(stripe, f"/_config/checkout/sessions/{bought['checkout_session_id']}/pay")
    wait_until("the purchase to be credited", lambda: http(
        "GET", f"{api}/v1/accounts/{acct}/credits/purchases/{bought['purchase_id']}", owner)[1].get("status") == "succeeded")
    s, paid = http("GET", f"{api}/v1/accounts/{acct}/payments", svc)
    payment = paid["payments"][0]["payment_id"]
    # The purchase's event went to the endpoint, which does not answer: a delivery to redeliver.
    delivery = wait_until("a delivery of the account's event", lambda: next(
        (d for d in http("GET", f"{api}/v1/webhook-endpoints/{ep['id']}/deliveries", svc)[1].get("deliveries", [])
         if d["account_id"] == acct and d["attempts"] >= 1), None), timeout=60)
    s, b = http("POST", f"{api}/v1/accounts/{acct}/usage", svc,
                {"consumable": "voice_minutes", "quantity": 1_060, "idempotency_key": "calls-1"})
    assert s == 200, (s, b)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            trail = []
            page.on("console", lambda m: trail.append(f"console {m.type}: {m.text}"))
            page.on("response", lambda r: trail.append(f"{r.status} {r.request.method} {r.url}"))

            def sign_in(token, where="#/"):
                page.goto("about:blank")
                page.goto(f"{api}/console#token={token}")
                page.wait_for_selector("#who:not(:empty)", timeout=20_000)
                if where != "#/":
                    page.evaluate(f"location.hash = {json.dumps(where)}")

            def account_loaded():
                page.wait_for_function("() => document.body.dataset.loadedMs !== undefined", timeout=30_000)

            def open_account(a):
                # Through the find page, so the account is read again even if it is the one shown.
                page.evaluate("location.hash = '#/'")
                page.wait_for_selector("#page-find:not([hidden])")
                page.evaluate("delete document.body.dataset.loadedMs")
                page.evaluate(f"location.hash = '#/account/{a}'")
                account_loaded()

            def first_cells(table):
                return page.eval_on_selector(f"#{table} tbody tr", "tr => [...tr.cells].map(c => c.textContent)")

            def act(opener, reason, amount=None):
                """Opens an action, confirms it with `reason`, and waits for the page to read the account again."""
                page.evaluate("delete document.body.dataset.loadedMs")
                opener()
                page.wait_for_selector("#confirm[open]")
                if amount is not None:
                    page.fill("#confirm-amount", amount)
                page.fill("#confirm-reason", reason)
                page.click("#confirm-go")
                page.wait_for_selector("#confirm:not([open])", state="attached", timeout=20_000)
                account_loaded()

            # ---- find an account, by email --------------------------------------------------
            sign_in(finance)
            checks.check("console: the find page shows for finance", page.is_visible("#page-find"))
            page.select_option("#find-by", "email")
            page.fill("#find-q", email.upper())
            page.click("#find-go")
            page.wait_for_selector(f"#find-results tbody tr[data-account='{acct}']")
            page.screenshot(path=str(shots / "console-find.png"))
            page.click(f"#find-results tbody tr[data-account='{acct}']")
            account_loaded()
            text = page.inner_text("#page-account")
            checks.check("console: the account page shows every section",
                         all(x in text for x in ["Account " + acct, "Grants", "Ledger", "Open holds", "Purchases and recharges",
                                                 "Recharges and their outcomes", "Disputes", "Entities", "Notifications",
                                                 "Webhook deliveries", "Audit log of this account", payment, welcome]), text[:400])
            page.screenshot(path=str(shots / "console-account.png"), full_page=True)

            # ---- an adjustment ----------------------------------------------------------------
            page.fill("#adjust-amount", "5")
            # The confirm step refuses no reason, and nothing is sent.
            page.evaluate("delete document.body.dataset.loadedMs")
            page.click("#adjust-go")
            page.wait_for_selector("#confirm[open]")
            page.click("#confirm-go")
            need = page.inner_text("#confirm-error")
            page.click("#confirm-cancel")
            checks.check("console: an action without a reason is not sent", "reason" in need.lower(), need)
            act(lambda: page.click("#adjust-go"), "goodwill: dropped call")
            ledger, audit = first_cells("ledger"), first_cells("acct-audit")
            checks.check("console: the adjustment is the newest ledger entry",
                         ledger[1] == "adjustment" and ledger[4] == "5", str(ledger))
            checks.check("console: the audit log records the adjustment, its reason and who made it",
                         audit[2] == "credits.adjust" and audit[4] == "goodwill: dropped call" and "finance" in audit[1], str(audit))

            # ---- a void (of the grant the adjustment made) -----------------------------------
            s, grants = http("GET", f"{api}/v1/accounts/{acct}/credits/grants", svc)
            goodwill = next(g["id"] for g in grants["grants"] if g["status"] == "active" and g["granted"] == 5 * C)
            row = page.locator("#grants tbody tr", has_text=goodwill)
            act(lambda: row.get_by_role("button", name="Void…").click(), "goodwill given twice")
            ledger, audit = first_cells("ledger"), first_cells("acct-audit")
            checks.check("console: the void is the newest ledger entry", ledger[1] == "void" and ledger[4] == "-5", str(ledger))
            checks.check("console: the audit log records the void",
                         audit[2] == "grant.void" and audit[3] == f"grant:{goodwill}", str(audit))
            grant_status = page.locator("#grants tbody tr", has_text=goodwill).inner_text()
            checks.check("console: the voided grant shows as voided", "voided" in grant_status, grant_status)

            # ---- a refund ---------------------------------------------------------------------
            row = page.locator("#payments tbody tr", has_text=payment)
            act(lambda: row.get_by_role("button", name="Refund…").click(), "customer asked for a refund", amount="5.00")
            audit = first_cells("acct-audit")
            checks.check("console: the audit log records the refund",
                         audit[2] == "payment.refund" and audit[3] == f"payment:{payment}", str(audit))

            # Stripe's charge.refunded arrives at the webhook: the refund's entry follows.
            def refunded():
                open_account(acct)
                return first_cells("ledger")[1] == "refund"
            wait_until("the refund's ledger entry", refunded, timeout=30, every=1.0)
            ledger = first_cells("ledger")
            checks.check("console: the refund is the newest ledger entry (a quarter of the block)",
                         ledger[1] == "refund" and ledger[4] == "-25", str(ledger))

            # ---- a redelivery -----------------------------------------------------------------
            row = page.locator("#deliveries tbody tr", has_text=delivery["id"])
            act(lambda: row.get_by_role("button", name="Redeliver…").click(), "receiver is back up")
            audit = first_cells("acct-audit")
            checks.check("console: the audit log records the redelivery",
                         audit[2] == "webhook_delivery.redeliver" and delivery["id"] in audit[3], str(audit))
            page.screenshot(path=str(shots / "console-after-actions.png"), full_page=True)

            # ---- the ledger's filter ----------------------------------------------------------
            page.select_option("#ledger-kind", "consumption")
            page.click("#ledger-form button")
            page.wait_for_function("() => [...document.querySelectorAll('#ledger tbody tr')].every(r => r.cells[1] && r.cells[1].textContent === 'consumption')")
            checks.check("console: the ledger filters by kind", True)

            # ---- the other pages -------------------------------------------------------------
            page.click("a[data-page=revenue]")
            page.wait_for_selector("#rev-svg rect")
            bars = page.eval_on_selector_all("#rev-svg rect", "rs => rs.map(r => [r.dataset.month, +r.dataset.value])")
            months = page.eval_on_selector_all("#revenue tbody tr", "rs => rs.map(r => r.cells[0].textContent)")
            checks.check("console: the revenue report, six months with a bar each", [b[0] for b in bars] == months and len(bars) == 6, f"{bars} {months}")
            # 20 paid minutes used this month at $0.20 each: at least $4.00 recognised.
            checks.check("console: this month's bar is the revenue recognised", bars[-1][1] >= 400, str(bars))
            page.screenshot(path=str(shots / "console-revenue.png"), full_page=True)
            page.click("a[data-page=reconciliation]")
            page.wait_for_function("() => document.getElementById('rec-summary').textContent !== ''")
            checks.check("console: the reconciliation page answers", page.inner_text("#rec-summary") != "")
            page.click("a[data-page=dead-letters]")
            page.wait_for_selector("#dead-letters tbody tr td")
            dl = page.inner_text("#dead-letters tbody")
            checks.check("console: the dead-letter page lists the queues with their depth", "DeadLetters" in dl, dl)
            page.click("a[data-page=audit]")
            page.wait_for_selector("#audit tbody tr td")
            page.fill("#audit-account", acct)
            page.click("#audit-form button")
            page.wait_for_function(f"() => [...document.querySelectorAll('#audit tbody tr')].length >= 6 && [...document.querySelectorAll('#audit tbody tr')].every(r => r.cells[3].textContent === '{acct}')")
            actions = page.eval_on_selector_all("#audit tbody tr", "rs => rs.map(r => r.cells[2].textContent)")
            checks.check("console: the audit log page lists the account's changes, newest first",
                         actions[:4] == ["webhook_delivery.redeliver", "payment.refund", "grant.void", "credits.adjust"], str(actions))
            page.screenshot(path=str(shots / "console-audit.png"), full_page=True)

            # ---- support: within its limit; no void, no refund, no audit ----------------------
            sign_in(support, f"#/account/{acct}")
            account_loaded()
            voids = page.locator("#grants button", has_text="Void…").count()
            refunds = page.locator("#payments button", has_text="Refund…").count()
            checks.check("console: support sees no void, no refund, and not the audit log",
                         voids == 0 and refunds == 0 and page.is_visible("#acct-audit-denied"), f"{voids} {refunds}")
            page.fill("#adjust-amount", "1000")
            page.click("#adjust-go")
            page.fill("#confirm-reason", "too generous")
            page.click("#confirm-go")
            page.wait_for_function("() => document.getElementById('confirm-error').textContent !== ''")
            refused = page.inner_text("#confirm-error")
            page.click("#confirm-cancel")
            checks.check("console: support's adjustment past its limit is refused, and says why",
                         "at most 100 credits" in refused, refused)
            page.fill("#adjust-amount", "2")
            act(lambda: page.click("#adjust-go"), "small goodwill")
            checks.check("console: support's adjustment within its limit is made", first_cells("ledger")[4] == "2", str(first_cells("ledger")))
            s, mine = http("GET", f"{api}/v1/audit?account_id={acct}&actor=local-support", svc)
            checks.check("console: the audit log says support made it",
                         s == 200 and [r["action"] for r in mine["records"]] == ["credits.adjust"], str(mine)[:300])

            # ---- an account with 10,000 ledger entries: under a second ------------------------
            big = f"console-big-{int(time.time())}"
            s, _ = http("PUT", f"{api}/v1/accounts/{big}", svc, {"plan": "free", "billing_contacts": [{"email": f"ops@{big}.example.com"}]})
            http("POST", f"{api}/v1/accounts/{big}/credits/adjustments", svc,
                 {"amount": 2 * BIG_LEDGER * C, "reason": "load", "idempotency_key": "load"})
            made = time.time()
            for batch in range(BIG_LEDGER // 500):
                events = [{"consumable": "voice_minutes", "quantity": 1 if batch or i else 31, "idempotency_key": f"u{batch}-{i}"}
                          for i in range(500)]
                s, b = http("POST", f"{api}/v1/accounts/{big}/usage/batch", svc, {"events": events})
                assert s == 200, (s, str(b)[:300])
            made = time.time() - made
            s, page1 = http("GET", f"{api}/v1/accounts/{big}/credits/transactions?limit=100", svc)
            entries = 0
            cursor = None
            while True:
                q = "&cursor=" + cursor if cursor else ""
                s, pg = http("GET", f"{api}/v1/accounts/{big}/credits/transactions?limit=100{q}", svc)
                entries += len(pg["transactions"])
                cursor = pg["next_cursor"]
                if not cursor:
                    break
            sign_in(finance, f"#/account/{big}")
            account_loaded()
            times = []
            for _ in range(5):
                open_account(big)
                times.append(int(page.evaluate("document.body.dataset.loadedMs")))
            times.sort()
            median = times[len(times) // 2]
            print(f"  console: account with {entries} ledger entries (made in {made:.0f}s): "
                  f"page ready in {times} ms (median {median})", flush=True)
            checks.check(f"console: an account with {BIG_LEDGER} ledger entries shows in under {BUDGET_MS} ms",
                         entries >= BIG_LEDGER and median < BUDGET_MS, f"{entries} entries, {times} ms")
            page.screenshot(path=str(shots / "console-big-account.png"))
        except Exception:
            print("\n".join(trail[-40:]), flush=True)
            raise
        finally:
            browser.close()
