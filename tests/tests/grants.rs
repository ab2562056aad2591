//! Grants against the emulator (rules §15): burn order across priorities, expiries and kinds;
//! expiry at the next write and by the scheduled run, racing a debit, with an open hold; void;
//! a refund of a partly spent purchase from its own grant; the revenue report against the
//! ledger; the ledger as CSV.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use topup::crediting::Payment;
use topup::ledger::EntryKind;
use topup::money::Micros;
use topup_tests::*;

async fn adjustment(w: &World, id: &str, body: Value) -> (u16, Value) {
    w.api(post(&format!("/v1/accounts/{id}/credits/adjustments"), &service(), body)).await
}

/// Moves the world's clock just past `instant_ms`.
fn until_past(w: &World, instant_ms: i64) {
    w.advance((instant_ms - w.now() + 50).max(0));
}

async fn grants(w: &World, id: &str) -> Vec<Value> {
    let (s, b) = w.api(get(&format!("/v1/accounts/{id}/credits/grants"), &person("member", id))).await;
    assert_eq!(s, 200, "{b}");
    b["grants"].as_array().cloned().unwrap_or_default()
}

fn by_reason<'a>(ledger: &'a [topup::ledger::LedgerEntry], reason: &str) -> &'a topup::ledger::LedgerEntry {
    ledger.iter().find(|e| e.description == reason).unwrap_or_else(|| panic!("no entry {reason}"))
}

/// The grant an adjustment made (its entry's one positive move).
fn grant_of(e: &topup::ledger::LedgerEntry) -> String {
    e.grants.first().map(|g| g.0.clone()).unwrap_or_default()
}

fn rfc(ms: i64) -> String {
    topup::clock::rfc3339(ms)
}

#[tokio::test]
async fn usage_burns_by_priority_then_expiry_then_promotional_then_age() {
    let w = World::new("org-runs").await;
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await; // the month's included runs
    let later = topup::clock::now_ms() + 3_600_000;
    for (body, why) in [
        (json!({"amount": 3 * C, "reason": "a promo", "idempotency_key": "a"}), "a"),
        (
            json!({"amount": 3 * C, "reason": "b paid", "idempotency_key": "b", "category": "paid",
                   "charge": {"amount": 500, "currency": "usd"}}),
            "b",
        ),
        (json!({"amount": C, "reason": "c first", "idempotency_key": "c", "priority": 10}), "c"),
        (json!({"amount": 2 * C, "reason": "d soon", "idempotency_key": "d", "expires_at": rfc(later)}), "d"),
    ] {
        let (s, b) = adjustment(&w, "org", body).await;
        assert_eq!(s, 201, "{why}: {b}");
    }
    let ledger = w.ledger("org").await;
    let (a, b, c, d) = (
        grant_of(by_reason(&ledger, "a promo")),
        grant_of(by_reason(&ledger, "b paid")),
        grant_of(by_reason(&ledger, "c first")),
        grant_of(by_reason(&ledger, "d soon")),
    );
    let order: Vec<Value> = grants(&w, "org").await.iter().map(|g| g["id"].clone()).collect();
    assert_eq!(order, [json!(c), json!(d), json!(a), json!(b)], "priority, then expiry, then promotional");
    let v = w.view("org").await;
    assert_eq!(v["next_expiry"], json!({"amount": 2 * C, "expires_at": rfc(later)}), "{v}");

    // 4.5 credits of runs (450 × 0.01): c (1), d (2), then 1.5 of a; b untouched.
    let (s, r) = w.usage("org", "runs", 450).await;
    assert_eq!(s, 200, "{r}");
    let list = grants(&w, "org").await;
    let remaining: HashMap<String, (i64, String)> = list
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap_or_default().to_string(),
                (g["remaining"].as_i64().unwrap_or(-1), g["status"].as_str().unwrap_or_default().to_string()),
            )
        })
        .collect();
    assert_eq!(remaining[&a], (3 * C / 2, "active".to_string()));
    assert_eq!(remaining[&b], (3 * C, "active".to_string()));
    assert_eq!(remaining[&c], (0, "used".to_string()));
    assert_eq!(remaining[&d], (0, "used".to_string()));
    assert_eq!(list[0]["id"], json!(a), "active first: {list:?}");
    assert_eq!(list[0]["category"], "promotional");
    assert_eq!(list[1]["category"], "paid");
    assert!(w.view("org").await["next_expiry"].is_null());
    // The debit's entry names what it took from each grant.
    let debit = w.ledger("org").await.into_iter().last().expect("entry");
    assert_eq!(debit.grants, [(c.clone(), -C), (d.clone(), -2 * C), (a.clone(), -3 * C / 2)]);

    // Bad terms are refused and change nothing.
    for (body, code) in [
        (json!({"amount": C, "reason": "x", "idempotency_key": "x1", "priority": 101}), "invalid_priority"),
        (json!({"amount": C, "reason": "x", "idempotency_key": "x2", "expires_at": rfc(1000)}), "invalid_expiry"),
        (json!({"amount": C, "reason": "x", "idempotency_key": "x3", "category": "paid"}), "invalid_grant_terms"),
        (json!({"amount": -C, "reason": "x", "idempotency_key": "x4", "priority": 1}), "invalid_grant_terms"),
        (json!({"amount": C, "reason": "x", "idempotency_key": "x5", "category": "gift"}), "invalid_category"),
    ] {
        let (s, b) = adjustment(&w, "org", body).await;
        assert_eq!((s, b["error"]["code"].as_str()), (422, Some(code)), "{b}");
    }
    let (s, b) =
        adjustment(&w, "org", json!({"amount": C, "reason": "x", "idempotency_key": "x6", "expires_at": "tomorrow"}))
            .await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{b}");
    w.assert_invariants("org").await;
}

/// A grant past its instant: exactly one of the expiry and a debit gets each credit, the grant
/// expires once, and the next write (or the scheduled run) does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expiry_racing_a_debit_lets_each_credit_go_once() {
    let w = World::new("org-runs").await.with_manual_clock(topup::clock::now_ms());
    let observer = w.observe_bus().await;
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await;
    let soon = w.now() + 1_500;
    let (s, b) = adjustment(
        &w,
        "org",
        json!({"amount": 2 * C, "reason": "short", "idempotency_key": "s", "expires_at": rfc(soon), "priority": 0}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    adjustment(&w, "org", json!({"amount": C, "reason": "long", "idempotency_key": "l"})).await;
    // Before the instant the short grant burns first.
    let (s, _) = w.usage("org", "runs", 50).await; // 0.5 credits
    assert_eq!(s, 200);
    until_past(&w, soon);
    // After it: the scheduled run and a debit of 1.2 credits (more than the live grant has)
    // at once, from two instances.
    let other = w.another_instance();
    let (run, debit) = tokio::join!(other.expire_grants(w.now()), w.usage("org", "runs", 120));
    run.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(debit.0, 402, "expired credits are never spent: {}", debit.1);
    let ledger = w.ledger("org").await;
    let expiries: Vec<_> = ledger.iter().filter(|e| e.kind == EntryKind::Expiry).collect();
    assert_eq!(expiries.len(), 1, "{ledger:#?}");
    assert_eq!(expiries[0].amount.get(), -(2 * C - C / 2), "what was left of it");
    assert_eq!(w.view("org").await["balance"], C);
    // Neither a second run nor a write expires it again.
    other.expire_grants(w.now()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.usage("org", "runs", 10).await.0, 200);
    assert_eq!(w.ledger("org").await.iter().filter(|e| e.kind == EntryKind::Expiry).count(), 1);
    let events = observer.drain(Duration::from_secs(2)).await;
    assert_eq!(of_type(&events, "GrantExpired").len(), 1, "{events:?}");
    w.assert_invariants("org").await;
}

#[tokio::test]
async fn a_debit_after_the_instant_expires_the_grant_first() {
    let w = World::new("org-runs").await.with_manual_clock(topup::clock::now_ms());
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await;
    let soon = w.now() + 1_000;
    adjustment(&w, "org", json!({"amount": C, "reason": "short", "idempotency_key": "s", "expires_at": rfc(soon)}))
        .await;
    adjustment(&w, "org", json!({"amount": C, "reason": "long", "idempotency_key": "l"})).await;
    until_past(&w, soon);
    assert_eq!(w.usage("org", "runs", 30).await.0, 200);
    let kinds: Vec<EntryKind> = w.ledger("org").await.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EntryKind::Adjustment, EntryKind::Adjustment, EntryKind::Expiry, EntryKind::Consumption],
        "the expiry comes first, in order"
    );
    assert_eq!(w.view("org").await["balance"], C - 30 * C / 100);
    w.assert_invariants("org").await;
}

/// An open hold keeps an expiring grant's credits until it settles; then what is left expires.
#[tokio::test]
async fn an_open_hold_keeps_what_it_reserved_past_the_expiry() {
    let w = World::new("org-runs").await.with_manual_clock(topup::clock::now_ms());
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await;
    let soon = w.now() + 1_500;
    adjustment(&w, "org", json!({"amount": 2 * C, "reason": "short", "idempotency_key": "s", "expires_at": rfc(soon)}))
        .await;
    let (s, hold) = w
        .debit(post(
            "/v1/accounts/org/usage/holds",
            &service(),
            json!({"consumable": "runs", "quantity": 200, "idempotency_key": "h", "ttl_seconds": 600}),
        ))
        .await;
    assert_eq!(s, 201, "{hold}");
    until_past(&w, soon);
    let report = w.credits.expire_grants(w.now()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.due, report.expired), (1, 0), "the hold keeps it");
    assert_eq!(w.usage("org", "runs", 1).await.0, 402, "expired credits serve only the hold");
    // The session used 1.5 of the 2 credits.
    let path = format!("/v1/accounts/org/usage/holds/{}/settle", hold["hold_id"].as_str().unwrap_or("?"));
    let (s, b) = w.debit(post(&path, &service(), json!({"quantity": 150}))).await;
    assert_eq!((s, b["from_credits"].as_i64()), (200, Some(3 * C / 2)), "{b}");
    let report = w.credits.expire_grants(w.now()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.expired, 1);
    let ledger = w.ledger("org").await;
    assert_eq!(ledger.last().map(|e| (e.kind, e.amount.get())), Some((EntryKind::Expiry, -C / 2)));
    assert_eq!(w.view("org").await["balance"], 0);
    w.assert_invariants("org").await;
}

#[tokio::test]
async fn void_removes_what_remains_once() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    adjustment(&w, "acme", json!({"amount": 4 * C, "reason": "gift", "idempotency_key": "g"})).await;
    adjustment(&w, "acme", json!({"amount": C, "reason": "other", "idempotency_key": "o", "priority": 90})).await;
    let gift = grant_of(by_reason(&w.ledger("acme").await, "gift"));
    w.usage("acme", "api_calls", 2_000).await; // 1,000 included, then $1 from the gift
    let path = format!("/v1/accounts/acme/credits/grants/{gift}/void");
    let (s, b) = w.api(post(&path, &person("owner", "acme"), json!({}))).await;
    assert_eq!(s, 403, "the service only: {b}");
    let (s, b) = w.api(post(&path, &service(), json!({}))).await;
    assert_eq!(
        (s, &b["status"], &b["remaining"], &b["granted"]),
        (200, &json!("voided"), &json!(0), &json!(4 * C)),
        "{b}"
    );
    let ledger = w.ledger("acme").await;
    assert_eq!(ledger.last().map(|e| (e.kind, e.amount.get())), Some((EntryKind::Void, -3 * C)));
    let (s, again) = w.api(post(&path, &service(), json!({}))).await;
    assert_eq!((s, &again), (200, &b), "voiding twice is a replay");
    assert_eq!(w.ledger("acme").await.len(), ledger.len());
    let (s, b) = w.api(post("/v1/accounts/acme/credits/grants/grant_nope/void", &service(), json!({}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("grant_not_found")));
    let v = w.view("acme").await;
    assert_eq!(
        (v["balance"].as_i64(), v["lifetime_added"].as_i64(), v["lifetime_spent"].as_i64()),
        (Some(C), Some(5 * C), Some(C)),
        "a void counts in neither total"
    );
    w.assert_invariants("acme").await;
}

fn paid(id: &str, credits: i64, cents: i64) -> Payment {
    Payment {
        payment_id: id.into(),
        kind: EntryKind::Purchase,
        credits: Micros::new(credits),
        charge_cents: cents,
        reference: "pur_test".into(),
        description: "credits".into(),
        recharge_month: None,
    }
}

/// A refund takes from its own payment's grant first; the revenue report's totals are the
/// ledger's; the ledger exports as CSV.
#[tokio::test]
async fn a_refund_takes_from_its_own_grant_and_the_report_matches_the_ledger() {
    let w = World::new("org-runs").await;
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await;
    adjustment(&w, "org", json!({"amount": 5 * C, "reason": "welcome", "idempotency_key": "w"})).await;
    w.credits.credit_payment("org", &paid("pi_one", 5 * C, 1_000)).await.unwrap_or_else(|e| panic!("{e}"));
    w.credits.credit_payment("org", &paid("pi_two", 4 * C, 600)).await.unwrap_or_else(|e| panic!("{e}"));
    // 7 credits: the promotional 5 first (same priority, no expiry), then 2 of pi_one (older).
    assert_eq!(w.usage("org", "runs", 700).await.0, 200);
    // pi_two refunded in full: its own 4, not pi_one's.
    let e = w.credits.refund_payment("org", "pi_two", 600, 600).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.map(|e| e.amount), Some(-4 * C));
    let list = grants(&w, "org").await;
    let one = list.iter().find(|g| g["remaining"] == 3 * C).expect("pi_one's grant keeps 3");
    assert_eq!((one["source"].as_str(), one["category"].as_str()), (Some("purchase"), Some("paid")));
    assert_eq!(w.view("org").await["balance"], 3 * C);

    // The report for this month: paid granted 9 credits ($16), consumed 2 of pi_one at
    // $2.00 a credit = $4, taken back 4 ($6), deferred 3 ($6).
    let month = topup::clock::month_of(topup::clock::now_ms());
    let (s, r) = w.api(get(&format!("/v1/reports/revenue?month={month}"), &service())).await;
    assert_eq!(s, 200, "{r}");
    let line = r["accounts"].as_array().and_then(|a| a.iter().find(|l| l["account_id"] == "org")).cloned();
    let line = line.unwrap_or_else(|| panic!("no line: {r}"));
    assert_eq!(line["granted"], json!({"credits": 9 * C, "amount": 1_600}));
    assert_eq!(line["consumed"], json!({"credits": 2 * C, "amount": 400}));
    assert_eq!(line["taken_back"], json!({"credits": 4 * C, "amount": 600}));
    assert_eq!(line["deferred"], json!({"credits": 3 * C, "amount": 600}));
    assert_eq!(line["expired_or_voided"], json!({"credits": 0, "amount": 0}));
    assert_eq!(line["restored"], json!({"credits": 0, "amount": 0}), "no dispute was won");
    // The same from the ledger by hand: paid credits in consumption entries.
    let ledger = w.ledger("org").await;
    let paid_ids: Vec<String> =
        list.iter().filter(|g| g["category"] == "paid").filter_map(|g| g["id"].as_str().map(str::to_string)).collect();
    let consumed: i64 = ledger
        .iter()
        .filter(|e| e.kind == EntryKind::Consumption)
        .flat_map(|e| e.grants.iter())
        .filter(|(g, _)| paid_ids.contains(g))
        .map(|(_, m)| -m)
        .sum();
    assert_eq!(line["consumed"]["credits"], consumed);
    assert!(r["total"]["consumed"]["credits"].as_i64() >= Some(consumed));
    let (s, b) = w.api(get("/v1/reports/revenue?month=2026-13", &service())).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")));
    let (s, _) = w.api(get(&format!("/v1/reports/revenue?month={month}"), &person("owner", "org"))).await;
    assert_eq!(s, 403);

    // The ledger as CSV: a header and a row per entry, newest first.
    let resp = credits_api::handle(
        &w.config,
        &w.webhooks,
        &w.credits,
        get("/v1/accounts/org/credits/transactions.csv", &person("member", "org")),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/csv; charset=utf-8"));
    let body = match resp.body() {
        lambda_http::Body::Text(t) => t.clone(),
        _ => String::new(),
    };
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "id,kind,amount,balance_after,created_at,description,entity");
    assert_eq!(lines.len(), ledger.len() + 1);
    assert!(lines[1].starts_with(&format!("{},refund,-4000000,3000000,", ledger[ledger.len() - 1].id)), "{}", lines[1]);
    w.assert_invariants("org").await;
}
