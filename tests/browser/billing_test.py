"""The billing page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright from
PyPI), against the served local stack: what a person sees and does, seed by seed.

Run by `./scripts/test` (scripts/stack.py) through tests/e2e/end_to_end.py: its `browser_tests`
serves the functions for the voice-minutes profile (blocks of minutes, a Free plan without
auto-reload) and calls `run`; its end-to-end scenario calls `run_amount` on the usd-overage stack.
Screenshots of the main states go to `.local/screenshots/`.
"""

import time
from decimal import Decimal

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def run(api, moto, table, token_for, http, checks, shots):
    """Every scenario of the billing page against `api` (the router of a served voice-minutes stack);
    `http(method, url, token, body)` is the stack's JSON client."""
    import boto3
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    svc = token_for("service", None)
    ddb = boto3.resource("dynamodb", endpoint_url=moto, region_name="us-east-1",
                         aws_access_key_id="test", aws_secret_access_key="test").Table(table)

    def account(acct, plan):
        s, b = http("PUT", f"{api}/v1/accounts/{acct}", svc,
                     {"plan": plan, "billing_contacts": [{"email": f"{acct}@example.com"}]})
        assert s in (200, 201), (s, b)

    def usage(acct, minutes, key):
        return http("POST", f"{api}/v1/accounts/{acct}/usage", svc,
                     {"consumable": "voice_minutes", "quantity": minutes, "idempotency_key": key})

    account("clinic", "pro")
    account("free-org", "free")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            trail = []  # what the page said and what failed, printed if a step times out
            page.on("console", lambda m: trail.append(f"console {m.type}: {m.text}"))
            page.on("requestfailed", lambda r: trail.append(f"failed {r.method} {r.url}: {r.failure}"))
            page.on("response", lambda r: trail.append(f"{r.status} {r.request.method} {r.url}"))
            purchase_posts = []
            page.on("request", lambda r: purchase_posts.append(r.url)
                    if r.method == "POST" and r.url.endswith("/credits/purchases") else None)

            def open_page(acct):
                page.goto("about:blank")  # a fresh load, not a fragment change of the same page
                page.goto(f"{api}/billing#token={token_for('owner', acct)}")
                page.wait_for_selector("#credits:not([hidden])", timeout=20_000)
                page.wait_for_selector("#plan:not(:empty)")

            # The Free plan: the seed's notice and an Upgrade link in place of the toggle.
            open_page("free-org")
            text = page.inner_text("#auto")
            checks.check("browser: Free shows 'Auto-reload not available on Free plan' with Upgrade",
                         "Auto-reload not available on Free plan" in text and page.is_visible("#upgrade")
                         and not page.is_visible("#auto-open"), text)
            page.screenshot(path=str(shots / "free-plan.png"), full_page=True)

            # Under the minimum: the message, and nothing is sent.
            open_page("clinic")
            page.click("#buy")
            page.fill("#buy-blocks", "0")
            page.click("#purchase-submit")
            msg = page.inner_text("#purchase-error")
            checks.check("browser: 0 blocks shows the bounds and sends nothing",
                         msg == "Choose from 1 to 100 blocks." and not purchase_posts, f"{msg!r} {purchase_posts}")
            page.fill("#buy-blocks", "2")
            total = page.inner_text("#buy-total")
            rate = page.inner_text("#rate")
            checks.check("browser: the dialog shows the plan's per-minute rate and the total",
                         rate == "$0.20/min" and total == "$40.00", f"{rate} {total}")
            page.screenshot(path=str(shots / "purchase-dialog.png"))

            # Buy two blocks, paid by card: the card refreshes with the balance and the entry.
            page.click("#purchase-submit")
            page.click("button[data-pay=card]")
            page.wait_for_selector(".notice.success", timeout=30_000)
            balance = page.inner_text("#balance")
            first = page.locator("#transactions tr").first
            checks.check("browser: buying 2 blocks shows 200 minutes and the purchase entry",
                         balance == "200 minutes" and first.get_attribute("data-kind") == "purchase"
                         and "200 minutes" in first.inner_text(), f"{balance} {first.inner_text()}")
            page.screenshot(path=str(shots / "credits-card.png"), full_page=True)

            # rules §20: the purchase is listed with its receipt (Stripe's invoice.paid reached the
            # webhook beside the payment), and the link opens the hosted receipt.
            page.wait_for_selector("#receipts-list tr a.receipt-link", timeout=30_000)
            row = page.locator("#receipts-list tr").first
            row_text = row.inner_text()
            link = row.locator("a.receipt-link").get_attribute("href")
            got = page.request.get(link)
            checks.check("browser: the purchase is listed with a receipt link that opens its receipt",
                         "Purchase" in row_text and "Paid" in row_text and "$40.00" in row_text
                         and got.status == 200 and "40.00 USD" in got.text(),
                         f"{row_text!r} {link} {got.status}")
            page.screenshot(path=str(shots / "receipts.png"), full_page=True)

            # A bank debit: the processing notice, then the error notice when it fails.
            page.click("#buy")
            page.fill("#buy-blocks", "1")
            page.click("#purchase-submit")
            page.click("button[data-pay=bank]")
            page.wait_for_selector(".notice.info", timeout=30_000)
            processing = page.inner_text("#notice")
            checks.check("browser: the processing notice of seed 000",
                         processing == "Your payment is processing. We\u2019ll email you when it completes."
                         or processing == "Your payment is processing. We'll email you when it completes.", processing)
            page.screenshot(path=str(shots / "processing.png"))
            page.click("#settle button[data-outcome=failed]")
            page.wait_for_selector(".notice.error", timeout=30_000)
            failed = page.inner_text("#notice")
            checks.check("browser: the failure notice of seed 000, and no minutes added",
                         failed in ("We couldn't confirm your payment. Please try again.",
                                    "We couldn\u2019t confirm your payment. Please try again.")
                         and page.inner_text("#balance") == "200 minutes", failed)

            # Auto-reload: save a card first, then turn it on.
            page.click("#auto-open")
            page.click("#add-card")
            page.click("#emulator-card")
            page.wait_for_selector("#auto-card:has-text('4242')", timeout=30_000)
            page.check("#auto-enabled")
            amount_hidden = page.is_hidden("#amount-field")
            page.fill("#auto-threshold", "10")
            page.fill("#auto-max", "10")
            page.screenshot(path=str(shots / "auto-dialog.png"))
            page.click("#auto-form button[type=submit]")
            page.wait_for_selector(".notice.success", timeout=10_000)
            checks.check("browser: auto-reload saved with a card (no amount field for voice-minutes)",
                         amount_hidden and "On:" in page.inner_text("#auto-summary"), page.inner_text("#auto-summary"))

            # Usage past the threshold: the recharge appears in the list.
            usage("clinic", 1_000, "browser-allowance")
            s, b = usage("clinic", 195, "browser-cross")
            deadline, kinds = time.time() + 60, []
            while time.time() < deadline:
                page.reload()
                page.wait_for_selector("#credits:not([hidden])")
                kinds = [r.get_attribute("data-kind") for r in page.locator("#transactions tr").all()]
                # The view reads the account, then the ledger page: a reload between the
                # recharge's commit and those two reads can show the entry with the balance
                # from just before it. Wait until both show the recharge.
                if "auto_recharge" in kinds and page.inner_text("#balance") == "105 minutes":
                    break
                time.sleep(1)
            checks.check("browser: a debit past the threshold shows the auto-reload in the list",
                         s == 200 and kinds[:1] == ["auto_recharge"] and page.inner_text("#balance") == "105 minutes"
                         and page.inner_text("#usage-text") == "1 of 10 used this month",
                         f"{s} {b} {kinds} {page.inner_text('#balance')}")

            def used_of_100(used):
                # This month's count, set directly in the table (reaching 81 by real recharges would
                # take 81 of them, beyond any plan's limit): the server computes the level.
                item = ddb.get_item(Key={"pk": "ACCOUNT#clinic", "sk": "ACCOUNT"}, ConsistentRead=True)["Item"]
                ar = item["auto_recharge"]
                ar["monthly_max"], ar["used_this_month"] = Decimal(100), Decimal(used)
                item["version"] = item["version"] + 1
                ddb.put_item(Item=item)

            # The usage bar's colour at 49%, 51% and 81% (seed 004: yellow above 50%, red above 80%).
            for used, want, colour in [(49, "ok", "rgb(30, 123, 52)"), (51, "warning", "rgb(224, 168, 0)"),
                                       (81, "critical", "rgb(179, 38, 30)")]:
                used_of_100(used)
                page.reload()
                page.wait_for_selector("#credits:not([hidden])")
                level = page.get_attribute("#usage-bar", "data-level")
                got = page.eval_on_selector("#usage-bar > span", "e => getComputedStyle(e).backgroundColor")
                width = page.eval_on_selector("#usage-bar > span", "e => e.style.width")
                checks.check(f"browser: the bar at {used}% is {want}", level == want and got == colour
                             and width == f"{used}%", f"{level} {got} {width}")
                if used == 81:
                    page.screenshot(path=str(shots / "usage-critical.png"), full_page=True)

            # At the cap: the seed's paused message. Then out of credits: the card with a button.
            used_of_100(100)
            page.reload()
            page.wait_for_selector("#credits:not([hidden])")
            paused = page.inner_text("#auto-paused")
            checks.check("browser: at the monthly cap the seed's paused message shows",
                         "You've reached your monthly auto-reload limit. Auto-reload is paused until next month."
                         in paused.replace("\u2019", "'"), paused)
            usage("clinic", 105, "browser-zero")
            page.reload()
            page.wait_for_selector("#credits:not([hidden])")
            checks.check("browser: at zero the Out of credits card offers a purchase",
                         page.is_visible("#out-of-credits") and page.is_visible("#out-of-credits button"),
                         page.inner_text("#balance"))

            # Budgets (rules §17): spend by member with its limit; an owner sets one.
            account("team-org", "free")
            s, b = http("POST", f"{api}/v1/accounts/team-org/credits/adjustments", svc,
                        {"amount": 500_000_000, "reason": "browser", "idempotency_key": "team-g"})
            assert s == 201, (s, b)
            # Past the Free plan's 30 included minutes, so the entity's usage draws credits.
            usage("team-org", 30, "team-allowance")
            s, b = http("POST", f"{api}/v1/accounts/team-org/usage", svc,
                        {"consumable": "voice_minutes", "quantity": 10, "idempotency_key": "team-u1",
                         "entity": "agent:maria"})
            assert s == 200, (s, b)
            spent_maria = b["from_credits"]
            open_page("team-org")
            page.wait_for_selector('#entities-list tr[data-entity="agent:maria"]', timeout=20_000)
            row = page.inner_text('#entities-list tr[data-entity="agent:maria"]')
            checks.check("browser: spend by member lists what agent:maria spent, with no limit",
                         spent_maria > 0 and "No limit" in row and "agent:maria" in row, row)
            page.fill("#entity-name", "agent:bob")
            page.fill("#entity-limit", "30")
            page.click("#entity-add")
            page.wait_for_selector('#entities-list tr[data-entity="agent:bob"]', timeout=20_000)
            s, bob = http("GET", f"{api}/v1/accounts/team-org/entities/agent:bob", svc)
            row = page.inner_text('#entities-list tr[data-entity="agent:bob"]')
            value = page.input_value('#entities-list tr[data-entity="agent:bob"] input')
            checks.check("browser: an owner sets agent:bob's monthly budget from the page",
                         s == 200 and bob["monthly_limit"] == bob["remaining_this_month"] and bob["monthly_limit"] > 0
                         and value == "30", f"{s} {bob} {row!r} {value!r}")
            page.screenshot(path=str(shots / "budgets.png"), full_page=True)

            # A phone-width screen: nothing wider than the viewport.
            page.set_viewport_size({"width": 375, "height": 800})
            open_page("clinic")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            unlabeled = page.evaluate("""[...document.querySelectorAll('input')].filter(i =>
                !i.closest('label') && !document.querySelector(`label[for="${i.id}"]`)).map(i => i.id)""")
            checks.check("browser: phone width fits and every input has a label",
                         overflow <= 0 and not unlabeled, f"overflow {overflow}, unlabeled {unlabeled}")
            page.screenshot(path=str(shots / "phone.png"), full_page=True)
        except Exception as e:
            raise RuntimeError(f"{e!r}; the page's last events: {trail[-12:]}") from e
        finally:
            browser.close()


def run_amount(api, account, token, checks, shots):
    """The free-form amount of usd-overage (seed 000): the default, a sum under the minimum
    refused before anything is sent, then a purchase that lands on the Credits card."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            posts = []
            page.on("request", lambda r: posts.append(r.url)
                    if r.method == "POST" and r.url.endswith("/credits/purchases") else None)
            page.goto(f"{api}/billing#token={token}")
            page.wait_for_selector("#plan:not(:empty)", timeout=20_000)
            before = page.inner_text("#balance")
            page.click("#buy")
            default = page.input_value("#buy-amount")
            page.fill("#buy-amount", "4")
            page.click("#purchase-submit")
            msg = page.inner_text("#purchase-error")
            checks.check("browser (usd-overage): default $10; $4 shows the minimum and sends nothing",
                         default == "10" and msg == "Enter an amount between $5.00 and $1,000.00." and not posts,
                         f"{default!r} {msg!r} {posts}")
            page.fill("#buy-amount", "12.50")
            page.click("#purchase-submit")
            page.click("button[data-pay=card]")
            page.wait_for_selector(".notice.success", timeout=30_000)
            after = page.inner_text("#balance")
            first = page.locator("#transactions tr").first
            checks.check(f"browser (usd-overage): buying $12.50 takes {before} to the new balance with the entry",
                         len(posts) == 1 and first.get_attribute("data-kind") == "purchase"
                         and "$12.50" in first.inner_text() and after != before, f"{before} → {after}")
            page.screenshot(path=str(shots / "usd-overage.png"), full_page=True)
        finally:
            browser.close()
