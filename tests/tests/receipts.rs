//! Receipts, invoices and tax against moto and the local Stripe (rules §20): every purchase and
//! auto-recharge has its invoice, kept as its receipt once paid; with Stripe Tax, Checkout adds
//! tax on top and credits are granted for the price before it; the list of purchases pages
//! newest first by key.

use std::time::Duration;

use serde_json::{json, Value};
use topup_tests::*;

/// A purchase opened, paid on the local Checkout page (`form`: the customer's choices), and
/// delivered as Stripe sends it: `checkout.session.completed`, then `invoice.paid`. The paid
/// session and the purchase's status after it.
async fn bought(w: &World, account: &str, body: Value, form: &[(&str, &str)]) -> (Value, Value) {
    let b = open_purchase(w, account, body).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), form).await;
    let (s, r) = w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    assert_eq!(s, 200, "{r}");
    let inv = invoice(paid["invoice"].as_str().expect("Checkout made its invoice")).await;
    let (s, r) = w.deliver(&stripe_event("invoice.paid", inv)).await;
    assert_eq!((s, r["result"].as_str()), (200, paid["invoice"].as_str()), "{r}");
    let status = purchase_status(w, account, b["purchase_id"].as_str().expect("id")).await;
    (paid, status)
}

async fn purchase_status(w: &World, account: &str, purchase: &str) -> Value {
    let (s, v) = w.buy(get(&format!("{}/{purchase}", purchases(account)), &person("owner", account))).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn list(w: &World, account: &str, query: &str) -> (u16, Value) {
    w.buy(get(&format!("{}{query}", purchases(account)), &person("admin", account))).await
}

#[tokio::test]
async fn an_untaxed_purchase_keeps_its_invoice_as_its_receipt() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let (paid, status) = bought(&w, "acme", json!({"amount": 2000}), &[]).await;
    let sess = session(paid["id"].as_str().expect("id")).await;
    assert_eq!(sess["automatic_tax"]["enabled"], false, "no tax unless configured");
    assert_eq!(paid["amount_total"], 2000);
    let inv = invoice(paid["invoice"].as_str().expect("invoice")).await;
    assert_eq!((inv["status"].as_str(), inv["total"].as_i64()), (Some("paid"), Some(2000)));
    assert_eq!(inv["metadata"]["topup_purchase_id"], status["purchase_id"], "its metadata names the purchase");
    assert_eq!(status["status"], "succeeded");
    assert_eq!(
        (status["subtotal"].as_i64(), status["tax"].as_i64(), status["total"].as_i64()),
        (Some(2000), Some(0), Some(2000))
    );
    assert_eq!(status["receipt_url"], inv["hosted_invoice_url"]);
    assert_eq!(status["invoice_pdf"], inv["invoice_pdf"]);
    // The receipt and its PDF are there to open.
    let (s, page) = local_page(&path_of(status["receipt_url"].as_str().expect("receipt url"))).await;
    assert_eq!(s, 200);
    assert!(page.contains("Receipt") && page.contains("20.00 USD"), "{page}");
    let pdf = status["invoice_pdf"].as_str().expect("pdf").to_string();
    let (s, body) = local_page(&path_of(&pdf)).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("%PDF-1.4") && body.contains("Total 20.00 USD"), "{body}");
    // The list has it with the same receipt; the webhook's deliveries again change nothing.
    let (s, l) = list(&w, "acme", "").await;
    assert_eq!(s, 200, "{l}");
    assert_eq!(l["purchases"].as_array().map(Vec::len), Some(1), "{l}");
    let item = &l["purchases"][0];
    assert_eq!((item["kind"].as_str(), item["status"].as_str()), (Some("purchase"), Some("succeeded")));
    assert_eq!((item["charge"]["amount"].as_i64(), item["credits"].as_i64()), (Some(2000), Some(20 * C)));
    assert_eq!(item["receipt_url"], status["receipt_url"]);
    assert_eq!(l["next_cursor"], Value::Null);
    let (s, _) = w.deliver(&stripe_event("invoice.paid", inv.clone())).await;
    assert_eq!(s, 200);
    assert_eq!(w.view("acme").await["balance"], 20 * C, "a receipt never credits");
    // Another invoice naming the purchase never replaces its receipt.
    let mut other = inv.clone();
    other["id"] = json!("in_another");
    let (s, r) = w.deliver(&stripe_event("invoice.paid", other)).await;
    assert_eq!((s, r["reason"].as_str()), (200, Some("another_invoice_recorded")), "{r}");
    let again = purchase_status(&w, "acme", status["purchase_id"].as_str().expect("id")).await;
    assert_eq!(again["receipt_url"], status["receipt_url"]);
    w.assert_invariants("acme").await;
}

fn path_of(url: &str) -> String {
    url.split_once("://").and_then(|(_, rest)| rest.split_once('/')).map_or(String::new(), |(_, p)| format!("/{p}"))
}

/// With Stripe Tax, Checkout collects the address and adds tax on top: a buyer in the test
/// address (GB, 20 %) pays $24.00 for $20.00 of credits, one elsewhere pays $20.00; the
/// purchase shows subtotal, tax and total; the revenue report keeps the tax apart.
#[tokio::test]
async fn a_taxed_purchase_adds_tax_and_credits_the_price_before_it() {
    let w = World::taxed("usd-overage").await;
    w.account("acme", "free").await;
    let (paid, status) = bought(&w, "acme", json!({"amount": 2000}), &[("country", "GB")]).await;
    let sess = session(paid["id"].as_str().expect("id")).await;
    assert_eq!(sess["automatic_tax"]["enabled"], true);
    assert_eq!(
        (sess["amount_subtotal"].as_i64(), sess["total_details"]["amount_tax"].as_i64(), sess["amount_total"].as_i64()),
        (Some(2000), Some(400), Some(2400))
    );
    assert_eq!(w.view("acme").await["balance"], 20 * C, "credits for the price before tax");
    assert_eq!(
        (
            status["charge"]["amount"].as_i64(),
            status["subtotal"].as_i64(),
            status["tax"].as_i64(),
            status["total"].as_i64()
        ),
        (Some(2000), Some(2000), Some(400), Some(2400)),
        "{status}"
    );
    assert!(status["receipt_url"].as_str().is_some_and(|u| u.contains("/_config/invoices/in_")), "{status}");
    let (_, page) = local_page(&path_of(status["receipt_url"].as_str().unwrap_or_default())).await;
    assert!(page.contains("4.00 USD") && page.contains("24.00 USD"), "{page}");
    // Outside the taxed address: no tax, the same credits.
    let (_, other) = bought(&w, "acme", json!({"amount": 1000}), &[("country", "US")]).await;
    assert_eq!((other["tax"].as_i64(), other["total"].as_i64()), (Some(0), Some(1000)), "{other}");
    assert_eq!(w.view("acme").await["balance"], 30 * C);
    // The month's revenue: $30.00 of credits granted at their price; $4.00 of tax apart.
    let month = topup::clock::month_of(topup::clock::now_ms());
    let (s, report) = w.api(get(&format!("/v1/reports/revenue?month={month}"), &service())).await;
    assert_eq!(s, 200, "{report}");
    let line = report["accounts"].as_array().and_then(|a| a.iter().find(|l| l["account_id"] == "acme")).cloned();
    let line = line.expect("acme's line");
    assert_eq!((line["granted"]["amount"].as_i64(), line["tax_collected"].as_i64()), (Some(3000), Some(400)), "{line}");
    assert_eq!(report["total"]["tax_collected"], 400);
    w.assert_invariants("acme").await;
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

/// A refund of a taxed payment takes back credits for the pre-tax share of what was refunded:
/// $12.00 of a $48.00 ($40.00 + 20 %) payment is a quarter, so 10 of its 40 credits.
#[tokio::test]
async fn a_refund_of_a_taxed_purchase_takes_back_the_pre_tax_share() {
    let w = World::taxed("usd-overage").await;
    w.account("acme", "free").await;
    let (paid, status) = bought(&w, "acme", json!({"amount": 4000}), &[("country", "GB")]).await;
    assert_eq!(status["total"], 4800);
    let pi = paid["payment_intent"].as_str().expect("pi").to_string();
    let quarter = refund_at_stripe(&pi, Some(1200)).await;
    let (s, r) = w.deliver(&stripe_event("charge.refunded", quarter)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(w.view("acme").await["balance"], 30 * C, "a quarter of the credits");
    // $1.00 more: 40 × 100 / 4800 = 0.8333… credits, rounded down (the customer's favour).
    let more = refund_at_stripe(&pi, Some(100)).await;
    w.deliver(&stripe_event("charge.refunded", more)).await;
    assert_eq!(w.view("acme").await["balance"], 30 * C - 833_333);
    let rest = refund_at_stripe(&pi, None).await;
    w.deliver(&stripe_event("charge.refunded", rest)).await;
    assert_eq!(w.view("acme").await["balance"], 0, "all of it refunded: all the credits");
    w.assert_invariants("acme").await;
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

/// A dispute of part of a taxed payment takes back the pre-tax share of the disputed amount:
/// $6.00 of a $12.00 ($10.00 + 20 %) payment is half, so 5 of its 10 credits; won, they return.
#[tokio::test]
async fn a_dispute_of_a_taxed_purchase_takes_back_the_pre_tax_share() {
    let w = World::taxed("usd-overage").await;
    let id = unique("taxdispute");
    w.account(&id, "free").await;
    let (paid, status) = bought(&w, &id, json!({"amount": 1000}), &[("country", "GB")]).await;
    assert_eq!(status["total"], 1200);
    let pi = paid["payment_intent"].as_str().expect("pi");
    let (_, intent) = local_stripe("GET", &format!("/v1/payment_intents/{pi}"), &[]).await;
    let charge = intent["latest_charge"].as_str().or_else(|| intent["latest_charge"]["id"].as_str()).expect("charge");
    let (s, dispute) = local_stripe("POST", &format!("/_config/charges/{charge}/dispute"), &[("amount", "600")]).await;
    assert_eq!(s, 200, "{dispute}");
    let (s, r) = w.deliver(&stripe_event("charge.dispute.created", dispute.clone())).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(w.view(&id).await["balance"], 5 * C, "half of the credits, not 6 of 10");
    let (_, closed) = local_stripe(
        "POST",
        &format!("/_config/disputes/{}/close", dispute["id"].as_str().unwrap_or("")),
        &[("status", "won")],
    )
    .await;
    w.deliver(&stripe_event("charge.dispute.closed", closed)).await;
    assert_eq!(w.view(&id).await["balance"], 10 * C);
    w.assert_invariants(&id).await;
}

/// An auto-recharge is invoiced once it is credited (its `AutoRechargeSucceeded`): the invoice
/// is paid by the recharge's own PaymentIntent, the card is charged once, and the list shows the
/// recharge with its receipt. Delivered again, nothing more is made.
#[tokio::test]
async fn an_auto_recharge_is_invoiced_and_paid_by_its_own_payment() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    let payments = w.save_stripe_card("acme", "4242424242424242").await;
    w.set_auto_recharge("acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 6 * C).await;
    w.usage("acme", "api_calls", 2_000).await; // $6 → $4: below $5
    let out = auto_recharge::handle(&w.credits, &payments, &trigger(&balance_low("acme"))).await.expect("recharge");
    assert_eq!(out["result"], "credited", "{out}");
    let events = observer.drain(Duration::from_secs(1)).await;
    let succeeded = of_type(&events, "AutoRechargeSucceeded");
    assert_eq!(succeeded.len(), 1, "{events:?}");
    let event = succeeded[0].clone();
    let pi = event["detail"]["payment_id"].as_str().expect("pi").to_string();
    for _ in 0..3 {
        let r = auto_recharge::handle_event(&w.credits, &payments, &trigger(&event), None).await.expect("invoiced");
        assert_eq!(r["result"], "invoiced", "{r}");
    }
    let (s, l) = list(&w, "acme", "").await;
    assert_eq!(s, 200, "{l}");
    let item = &l["purchases"][0];
    assert_eq!((item["kind"].as_str(), item["status"].as_str()), (Some("auto_recharge"), Some("succeeded")), "{l}");
    assert_eq!(
        (item["charge"]["amount"].as_i64(), item["credits"].as_i64(), item["total"].as_i64()),
        (Some(1000), Some(10 * C), Some(1000))
    );
    let url = item["receipt_url"].as_str().expect("receipt");
    // Each id the list gives reads on its own, the recharge's too.
    let rid = item["purchase_id"].as_str().unwrap_or_default();
    let (s, one) = w.buy(get(&format!("{}/{rid}", purchases("acme")), &person("owner", "acme"))).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(&one, item, "the recharge reads as the list shows it");
    let (s, b) = w.buy(get(&format!("{}/rch_nosuchrecharge", purchases("acme")), &person("owner", "acme"))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("purchase_not_found")), "{b}");
    let id = url.rsplit('/').next().expect("invoice id");
    let inv = invoice(id).await;
    assert_eq!(
        (inv["status"].as_str(), inv["amount_paid"].as_i64(), inv["total"].as_i64()),
        (Some("paid"), Some(1000), Some(1000))
    );
    assert_eq!(inv["auto_advance"], false, "Stripe never collects it");
    assert_eq!(inv["metadata"]["topup_payment_intent"], pi.as_str());
    // The card was charged once: the customer has one PaymentIntent, the recharge's.
    let customer = w.credits.account("acme").await.expect("account").stripe_customer_id.expect("customer");
    let (_, pis) = local_stripe("GET", &format!("/v1/payment_intents?customer={customer}"), &[]).await;
    let ids: Vec<&str> =
        pis["data"].as_array().map(|d| d.iter().filter_map(|p| p["id"].as_str()).collect()).unwrap_or_default();
    assert_eq!(ids, [pi.as_str()], "{pis}");
    // A PaymentIntent attached once cannot pay another invoice.
    let (s, _) = local_stripe("POST", &format!("/v1/invoices/{id}/attach_payment"), &[("payment_intent", &pi)]).await;
    assert_eq!(s, 400);
    // Stripe's own invoice.paid for it keeps the same receipt.
    let (s, r) = w.deliver(&stripe_event("invoice.paid", inv)).await;
    assert_eq!((s, r["result"].as_str()), (200, Some(id)), "{r}");
    w.assert_invariants("acme").await;
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

/// A replay of `AutoRechargeSucceeded` after the first run made and finalized the invoice but
/// could not attach the payment, and after Stripe forgot the idempotency keys: it goes on with
/// the same invoice, so the recharge has one invoice, paid by its one PaymentIntent.
#[tokio::test]
async fn a_recharge_replayed_after_a_failed_attach_goes_on_with_its_invoice() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    let payments = w.save_stripe_card("acme", "4242424242424242").await;
    w.set_auto_recharge("acme", json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 6 * C).await;
    w.usage("acme", "api_calls", 2_000).await;
    let out = auto_recharge::handle(&w.credits, &payments, &trigger(&balance_low("acme"))).await.expect("recharge");
    assert_eq!(out["result"], "credited", "{out}");
    let events = observer.drain(Duration::from_secs(1)).await;
    let event = of_type(&events, "AutoRechargeSucceeded").first().cloned().expect("AutoRechargeSucceeded");
    let pi = event["detail"]["payment_id"].as_str().expect("pi").to_string();
    let recharge = event["detail"]["recharge_id"].as_str().expect("recharge").to_string();
    let customer = w.credits.account("acme").await.expect("account").stripe_customer_id.expect("customer");
    let (s, _) = local_stripe("POST", "/_config/faults", &[("attach_down", &customer)]).await;
    assert_eq!(s, 200);
    let e = auto_recharge::handle_event(&w.credits, &payments, &trigger(&event), None).await.expect_err("attach down");
    assert!(e.retryable(), "{e:?}");
    let invoices = |customer: String| async move {
        let (s, l) = local_stripe("GET", &format!("/v1/invoices?customer={customer}"), &[]).await;
        assert_eq!(s, 200, "{l}");
        l["data"].as_array().cloned().unwrap_or_default()
    };
    let first = invoices(customer.clone()).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["status"], "open", "finalized, not paid");
    // A day later: Stripe has forgotten the keys, and the attach works again.
    let (s, _) = local_stripe("POST", "/_config/faults", &[("attach_up", &customer)]).await;
    assert_eq!(s, 200);
    let (s, f) = local_stripe("POST", "/_config/faults", &[("forget_keys_containing", &recharge)]).await;
    assert_eq!(s, 200, "{f}");
    assert!(f["forgotten"].as_i64().is_some_and(|n| n > 0), "{f}");
    let r = auto_recharge::handle_event(&w.credits, &payments, &trigger(&event), None).await.expect("invoiced");
    assert_eq!((r["result"].as_str(), r["invoice"].as_str()), (Some("invoiced"), first[0]["id"].as_str()), "{r}");
    let after = invoices(customer.clone()).await;
    assert_eq!(after.len(), 1, "one invoice for the recharge: {after:?}");
    assert_eq!((after[0]["status"].as_str(), after[0]["amount_paid"].as_i64()), (Some("paid"), Some(1000)));
    // Charged once: the customer's one PaymentIntent is the recharge's.
    let (_, pis) = local_stripe("GET", &format!("/v1/payment_intents?customer={customer}"), &[]).await;
    let ids: Vec<&str> =
        pis["data"].as_array().map(|d| d.iter().filter_map(|p| p["id"].as_str()).collect()).unwrap_or_default();
    assert_eq!(ids, [pi.as_str()], "{pis}");
    w.assert_invariants("acme").await;
}

/// `GET …/credits/purchases`: newest first, `limit` a page, the cursor going on where the page
/// ended; only billing roles of the account; a cursor we did not make is 400.
#[tokio::test]
async fn the_list_pages_newest_first_with_a_cursor() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.account("other", "free").await;
    let mut opened = Vec::new();
    for cents in [500, 600, 700, 800, 900] {
        opened.push(open_purchase(&w, "acme", json!({"amount": cents})).await["purchase_id"].clone());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    open_purchase(&w, "other", json!({"amount": 1000})).await;
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_string();
    let mut pages = 0;
    loop {
        let (s, page) = list(&w, "acme", &query).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        let items = page["purchases"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 2);
        for i in &items {
            assert_eq!((i["status"].as_str(), i["receipt_url"].clone()), (Some("pending"), Value::Null), "{i}");
            seen.push(i["purchase_id"].clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    opened.reverse();
    assert_eq!(seen, opened, "newest first, each once, only this account's");
    for (q, status) in [("?cursor=nope", 400), ("?limit=0", 400), ("?limit=101", 400)] {
        let (s, b) = list(&w, "acme", q).await;
        assert_eq!((s, b["error"]["code"].as_str()), (status, Some("invalid_request")), "{q}: {b}");
    }
    for token in [person("editor", "acme"), person("owner", "other")] {
        let (s, b) = w.buy(get(&purchases("acme"), &token)).await;
        assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")), "{b}");
    }
    // Staff read every account's purchases and each one's status (rules §19), and buy nothing.
    let first = opened[0].as_str().unwrap_or_default().to_string();
    for role in ["support", "finance"] {
        let (s, b) = w.buy(get(&purchases("acme"), &staff(role))).await;
        assert_eq!((s, b["purchases"].as_array().map(Vec::len)), (200, Some(5)), "{role}: {b}");
        let (s, b) = w.buy(get(&format!("{}/{first}", purchases("acme")), &staff(role))).await;
        assert_eq!((s, b["purchase_id"].as_str()), (200, Some(first.as_str())), "{role}: {b}");
        let mut req = post(&purchases("acme"), &staff(role), json!({"amount": 500}));
        req.headers_mut().insert("idempotency-key", lambda_http::http::HeaderValue::from_static("staff-buys"));
        let (s, b) = w.buy(req).await;
        assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")), "{role}: {b}");
    }
}

/// Reconciliation compares each paid purchase's invoice with what was credited: a receipt whose
/// subtotal is not the credited price is wrong; a paid purchase whose invoice has not been
/// recorded is lagging.
#[tokio::test]
async fn reconciliation_compares_invoices_with_credits() {
    let w = World::taxed("usd-overage").await;
    w.account("acme", "free").await;
    bought(&w, "acme", json!({"amount": 1500}), &[("country", "GB")]).await;
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    // Paid and credited, its invoice.paid not delivered yet.
    let b = open_purchase(&w, "acme", json!({"amount": 1000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[("country", "GB")]).await;
    w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    let codes: Vec<_> = report.differences.iter().map(|d| (d.code.to_string(), d.severity)).collect();
    assert_eq!(
        codes,
        [("receipt_missing".to_string(), topup::reconcile::Severity::Lagging)],
        "{:?}",
        report.differences
    );
    w.deliver(&stripe_event("invoice.paid", invoice(paid["invoice"].as_str().expect("invoice")).await)).await;
    assert!(w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile").differences.is_empty());
    // A receipt changed by hand: its subtotal is no longer what was credited.
    let pk = topup::adapters::dynamo::to_attr(&json!(format!("ACCOUNT#acme")));
    let rows = w
        .dynamo
        .query()
        .table_name(&w.config.table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :r)")
        .expression_attribute_values(":pk", pk)
        .expression_attribute_values(":r", aws_sdk_dynamodb::types::AttributeValue::S("RECEIPT#".into()))
        .send()
        .await
        .expect("query");
    let mut row = rows.items()[0].clone();
    let mut invoice_attr = topup::adapters::dynamo::from_attr(&row["invoice"]).expect("invoice");
    invoice_attr["subtotal"] = json!(1);
    row.insert("invoice".into(), topup::adapters::dynamo::to_attr(&invoice_attr));
    write_items(&w, vec![row]).await;
    let report = w.credits.reconcile_account(&stripe_payments(), "acme").await.expect("reconcile");
    let codes: Vec<_> = report.differences.iter().map(|d| d.code.to_string()).collect();
    assert_eq!(codes, ["invoice_mismatch"], "{:?}", report.differences);
}

/// What a page of the list costs, counted at the SDK: one strongly consistent read of the
/// account, one Query of its receipt rows (by key, newest first, one more than the page to know
/// whether another follows), and one read of each listed purchase's record for its status;
/// auto-recharges need none. Never a scan, whatever the account's history.
#[tokio::test]
async fn a_page_of_the_list_is_one_query_and_a_read_per_purchase() {
    use topup::adapters::dynamo::DynamoStore;
    use topup::adapters::eventbridge::EventBridgeBus;
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    for cents in 500..512 {
        open_purchase(&w, "acme", json!({"amount": cents})).await;
    }
    let counter = RequestCounter::default();
    let credits = topup::engine::Credits::new(
        w.config.profile.clone(),
        DynamoStore::new(counter.dynamo(&w.aws), w.config.table.clone()),
        EventBridgeBus::new(w.events.clone(), w.config.event_bus.clone()),
    );
    counter.take();
    let page = credits.purchases_page("acme", 10, None).await.expect("page");
    assert_eq!(page.purchases.len(), 10);
    let counts = counter.take();
    assert_eq!(
        counts,
        [("GetItem".to_string(), 11), ("Query".to_string(), 1)].into_iter().collect(),
        "the account, 10 purchases, one query"
    );
    let rest = credits.purchases_page("acme", 10, page.next_cursor.as_deref()).await.expect("page");
    assert_eq!((rest.purchases.len(), rest.next_cursor), (2, None));
    assert_eq!(counter.take(), [("GetItem".to_string(), 3), ("Query".to_string(), 1)].into_iter().collect());
}
