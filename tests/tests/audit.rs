//! The audit log and the staff roles against moto and localstripe (rules §19): who may do what
//! on every route; each change recorded once, in the same transaction as the change where the
//! change is one; a replayed request records nothing new; `GET /v1/audit` pages newest first
//! with its filters; and the verify command names a record edited in the table.

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use topup::audit::AuditLog;
use topup::store::Accounts;
use topup_tests::*;

async fn adjust(w: &World, id: &str, token: &str, amount: i64, key: &str) -> (u16, Value) {
    w.api(post(
        &format!("/v1/accounts/{id}/credits/adjustments"),
        token,
        json!({"amount": amount, "reason": format!("goodwill {key}"), "idempotency_key": key}),
    ))
    .await
}

async fn audit(w: &World, token: &str, query: &str) -> (u16, Value) {
    w.api(get(&format!("/v1/audit{query}"), token)).await
}

async fn records_of(w: &World, id: &str) -> Vec<topup::audit::AuditRecord> {
    w.credits.store.audit_chain(id, 0, 1000).await.expect("chain")
}

fn actions(records: &[topup::audit::AuditRecord]) -> Vec<&str> {
    records.iter().map(|r| r.action.as_str()).collect()
}

/// The role matrix on the routes: support reads, adjusts up to its limit and redelivers;
/// finance also voids, pauses auto-recharge, reads the report and the audit log; neither
/// changes anything else; people of an account none of it.
#[tokio::test]
async fn staff_may_do_what_their_role_holds_on_every_route_and_nothing_more() {
    let w = World::new("usd-overage").await;
    let id = unique("staffed");
    w.account(&id, "free").await;
    let (support, finance, owner) = (staff("support"), staff("finance"), person("owner", &id));
    let limit = w.config.support_adjust_limit;

    // Reads: every view route for both.
    for path in ["credits", "credits/transactions", "credits/grants", "notifications", "entities", "payments"] {
        for t in [&support, &finance] {
            let (s, b) = w.api(get(&format!("/v1/accounts/{id}/{path}"), t)).await;
            assert_eq!(s, 200, "{path}: {b}");
        }
    }
    // Adjustments: support up to its limit either way, not past it; finance and the service past it.
    assert_eq!(adjust(&w, &id, &support, limit, "s1").await.0, 201);
    let (s, b) = adjust(&w, &id, &support, limit + 1, "s2").await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("adjustment_above_limit")), "{b}");
    assert_eq!(adjust(&w, &id, &support, -limit - 1, "s3").await.0, 403);
    assert_eq!(adjust(&w, &id, &finance, limit + 1, "f1").await.0, 201);
    assert_eq!(adjust(&w, &id, &service(), 3 * limit, "v1").await.0, 201);
    assert_eq!(adjust(&w, &id, &owner, 1, "o1").await.0, 403);

    // Voids: finance, not support.
    let (_, grants) = w.api(get(&format!("/v1/accounts/{id}/credits/grants"), &service())).await;
    let grant = grants["grants"][0]["id"].as_str().expect("a grant").to_string();
    let void = |t: &str| post(&format!("/v1/accounts/{id}/credits/grants/{grant}/void"), t, json!({"reason": "mistake"}));
    let (s, b) = w.api(void(&support)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")), "{b}");
    let (s, b) = w.api(void(&finance)).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("voided")), "{b}");

    // Auto-recharge: finance pauses or resumes, and only that; support not at all.
    let pause = |t: &str, body: Value| put(&format!("/v1/accounts/{id}/credits/auto-recharge"), t, body);
    assert_eq!(w.api(pause(&support, json!({"enabled": false, "reason": "asked"}))).await.0, 403);
    let (s, b) = w.api(pause(&finance, json!({"enabled": false, "threshold": 1, "reason": "asked"}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("staff_pause_only")), "{b}");
    let (s, b) = w.api(pause(&finance, json!({"enabled": false, "reason": "asked"}))).await;
    assert_eq!(s, 200, "{b}");

    // Deployment-wide: the report and the audit log are finance's; endpoints are read by both,
    // changed by the service only.
    assert_eq!(w.api(get("/v1/reports/revenue?month=2025-01", &support)).await.0, 403);
    assert_eq!(w.api(get("/v1/reports/revenue?month=2025-01", &finance)).await.0, 200);
    assert_eq!(audit(&w, &support, "").await.0, 403);
    assert_eq!(audit(&w, &owner, "").await.0, 403);
    assert_eq!(audit(&w, &person("owner", &id), &format!("?account_id={id}")).await.0, 403);
    assert_eq!(audit(&w, &finance, "").await.0, 200);
    assert_eq!(audit(&w, &service(), "").await.0, 200);
    assert_eq!(w.api(get("/v1/webhook-endpoints", &support)).await.0, 200);
    let hook = json!({"url": "https://127.0.0.1:9/hook", "events": ["*"]});
    assert_eq!(w.api(post("/v1/webhook-endpoints", &finance, hook.clone())).await.0, 403);
    // Nothing else: the account's own settings, lanes, alerts, budgets, plan.
    let denied = [
        put(&format!("/v1/accounts/{id}"), &finance, json!({"plan": "free", "billing_contacts": []})),
        put(&format!("/v1/accounts/{id}/lanes"), &finance, json!({"lanes": 2})),
        put(&format!("/v1/accounts/{id}/credits/alerts"), &finance, json!({"thresholds": [1000000]})),
        put(&format!("/v1/accounts/{id}/entities/bob"), &finance, json!({"monthly_limit": 5})),
    ];
    for req in denied {
        let path = req.uri().path().to_string();
        let (s, b) = w.api(req).await;
        assert_eq!(s, 403, "{path}: {b}");
    }
    // Refunds are the purchase function's: finance may, support and the owner may not (the
    // payment need not exist for the role to be refused first).
    let refund = |t: &str| {
        post(&format!("/v1/accounts/{id}/payments/pi_none/refund"), t, json!({"reason": "r", "idempotency_key": "k"}))
    };
    assert_eq!(w.buy(refund(&support)).await.0, 403);
    assert_eq!(w.buy(refund(&owner)).await.0, 403);
    let (s, b) = w.buy(refund(&finance)).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("payment_not_found")), "{b}");

    // Each change is in the account's chain once, as its caller's.
    let records = records_of(&w, &id).await;
    assert_eq!(
        actions(&records),
        ["account.create", "credits.adjust", "credits.adjust", "credits.adjust", "grant.void"],
        "a refused request records nothing; a pause of what was off changes nothing"
    );
    let who: Vec<(&str, &str)> = records.iter().map(|r| (r.actor.sub.as_str(), r.actor.role.as_str())).collect();
    assert_eq!(
        who[1..],
        [("support-person", "support"), ("finance-person", "finance"), ("backend", "service"), ("finance-person", "finance")]
    );
    assert_eq!(records[4].reason.as_deref(), Some("mistake"));
}

/// A replayed adjustment (same key) answers its first entry and records nothing new.
#[tokio::test]
async fn a_replayed_request_records_nothing_new() {
    let w = World::new("usd-overage").await;
    let id = unique("replayed");
    w.account(&id, "free").await;
    let first = adjust(&w, &id, &staff("support"), 5 * C, "once").await;
    assert_eq!(first.0, 201, "{}", first.1);
    for _ in 0..3 {
        let again = adjust(&w, &id, &staff("support"), 5 * C, "once").await;
        assert_eq!(again.1["id"], first.1["id"], "the first entry, again");
    }
    // Another instance, whose cache knows nothing, replays it too.
    let other = w.another_instance();
    let replay = read(
        credits_api::handle(
            &w.config,
            &w.webhooks,
            &other,
            post(
                &format!("/v1/accounts/{id}/credits/adjustments"),
                &staff("support"),
                json!({"amount": 5 * C, "reason": "goodwill once", "idempotency_key": "once"}),
            ),
        )
        .await,
    );
    assert_eq!(replay.1["id"], first.1["id"]);
    assert_eq!(actions(&records_of(&w, &id).await), ["account.create", "credits.adjust"]);
    assert_eq!(w.view(&id).await["balance"], 5 * C);
}

/// The record is an item of the change's own transaction: when it cannot be written, neither
/// is the change (and the other way round).
#[tokio::test]
async fn the_record_commits_with_the_change_or_neither_does() {
    let w = World::new("usd-overage").await;
    let id = unique("atomic");
    w.account(&id, "free").await;
    assert_eq!(adjust(&w, &id, &service(), 2 * C, "a1").await.0, 201);
    let head = w.credits.store.load_account(&id).await.expect("load").expect("account").audit.expect("a head");
    // Someone put an item where the next record goes: the next adjustment's transaction fails
    // whole — no ledger entry, no balance, no record.
    let squat: std::collections::HashMap<String, AttributeValue> = [
        ("pk".to_string(), AttributeValue::S(format!("AUDIT#{id}"))),
        ("sk".to_string(), AttributeValue::S(format!("SEQ#{:012}", head.seq + 1))),
    ]
    .into_iter()
    .collect();
    write_items(&w, vec![squat]).await;
    let entries = w.ledger(&id).await.len();
    let (s, b) = adjust(&w, &id, &service(), 3 * C, "a2").await;
    assert!(s >= 500, "{s} {b}");
    assert_eq!(w.ledger(&id).await.len(), entries, "no entry without its record");
    assert_eq!(w.view(&id).await["balance"], 2 * C);
    w.dynamo
        .delete_item()
        .table_name(&w.config.table)
        .key("pk", AttributeValue::S(format!("AUDIT#{id}")))
        .key("sk", AttributeValue::S(format!("SEQ#{:012}", head.seq + 1)))
        .send()
        .await
        .expect("delete");
    // The same request again: now the change and its record land together.
    let (s, b) = adjust(&w, &id, &service(), 3 * C, "a2").await;
    assert_eq!(s, 201, "{b}");
    let records = records_of(&w, &id).await;
    let last = records.last().expect("a record");
    assert_eq!((last.action.as_str(), last.after.as_ref().map(|a| a["transaction_id"].clone())), ("credits.adjust", Some(b["id"].clone())));
    let head = w.credits.store.load_account(&id).await.expect("load").expect("account").audit;
    assert_eq!(head, Some(last.head()), "the account's head moved with its record");
}

/// `GET /v1/audit`: newest first, one account or all of them, by actor and by action, with a
/// cursor that goes on where the page stopped.
#[tokio::test]
async fn the_audit_log_pages_newest_first_with_its_filters() {
    let w = World::new("usd-overage").await;
    let (a, b) = (unique("aud-a"), unique("aud-b"));
    w.account(&a, "free").await;
    w.account(&b, "free").await;
    for i in 0..4 {
        let who = if i % 2 == 0 { staff("support") } else { staff("finance") };
        assert_eq!(adjust(&w, &a, &who, C, &format!("a{i}")).await.0, 201);
        assert_eq!(adjust(&w, &b, &service(), C, &format!("b{i}")).await.0, 201);
    }
    let fin = staff("finance");
    // One account: its chain, newest first, in pages.
    let (s, p1) = audit(&w, &fin, &format!("?account_id={a}&limit=3")).await;
    assert_eq!(s, 200, "{p1}");
    let seqs = |p: &Value| p["records"].as_array().expect("records").iter().map(|r| r["seq"].as_u64().unwrap_or(0)).collect::<Vec<_>>();
    assert_eq!(seqs(&p1), [5, 4, 3]);
    let cursor = p1["next_cursor"].as_str().expect("a cursor").to_string();
    let (_, p2) = audit(&w, &fin, &format!("?account_id={a}&limit=3&cursor={cursor}")).await;
    assert_eq!((seqs(&p2), p2["next_cursor"].clone()), (vec![2, 1], Value::Null));
    // Every record has the shape of rules §19.
    let r = &p1["records"][0];
    for k in ["id", "at", "actor", "action", "account_id", "target", "request_id", "before", "after", "hash"] {
        assert!(r.get(k).is_some(), "{k} in {r}");
    }
    assert_eq!((r["actor"]["role"].as_str(), r["account_id"].as_str()), (Some("finance"), Some(a.as_str())));
    // By actor and by action, across accounts (gsi3), newest first.
    let (_, by_support) = audit(&w, &fin, "?actor=support-person").await;
    let list = by_support["records"].as_array().expect("records");
    assert_eq!(list.len(), 2, "{by_support}");
    assert!(list.iter().all(|r| r["actor"]["sub"] == "support-person" && r["account_id"] == a.as_str()));
    let (_, adjusts) = audit(&w, &fin, "?action=credits.adjust&limit=100").await;
    let all = adjusts["records"].as_array().expect("records");
    assert_eq!(all.len(), 8);
    let times: Vec<&str> = all.iter().map(|r| r["at"].as_str().unwrap_or("")).collect();
    assert!(times.windows(2).all(|t| t[0] >= t[1]), "newest first: {times:?}");
    let (_, walk) = audit(&w, &fin, "?action=credits.adjust&limit=5").await;
    let cursor = walk["next_cursor"].as_str().expect("more").to_string();
    let (_, rest) = audit(&w, &fin, &format!("?action=credits.adjust&limit=5&cursor={cursor}")).await;
    let ids = |p: &Value| p["records"].as_array().map(|l| l.iter().map(|r| r["id"].clone()).collect::<Vec<_>>()).unwrap_or_default();
    let mut walked = ids(&walk);
    walked.extend(ids(&rest));
    assert_eq!(walked, ids(&adjusts), "two pages are the one list");
    // A cursor of the list across accounts does not go on one account's.
    let from = topup::audit::Position::from_cursor(&cursor).expect("our cursor").chain;
    let other = if from == a { &b } else { &a };
    let (s, body) = audit(&w, &fin, &format!("?account_id={other}&cursor={cursor}")).await;
    assert_eq!(s, 400, "{body}");
    // `actor` takes a role as well as a `sub`.
    let (_, by_role) = audit(&w, &fin, &format!("?account_id={a}&actor=support")).await;
    let list = by_role["records"].as_array().expect("records");
    assert_eq!(list.len(), 2, "{by_role}");
    assert!(list.iter().all(|r| r["actor"]["role"] == "support"));
    // What it refuses.
    for q in ["?cursor=nope", "?cursor=", "?actor=", "?account_id=a%20b", "?action=DROP%20TABLE", "?limit=0"] {
        let (s, body) = audit(&w, &fin, q).await;
        assert_eq!(s, 400, "{q}: {body}");
    }
}

/// The service removing an account's card is a change of its settings: recorded once, with
/// what it was and became; removing it again records nothing (rules §19).
#[tokio::test]
async fn removing_the_card_is_recorded() {
    let w = World::new("usd-overage").await;
    let id = unique("aud-card");
    w.account(&id, "free").await;
    w.save_stripe_card(&id, "4242424242424242").await;
    let card = w.credits.account(&id).await.expect("account").payment_method.expect("a card").id;
    let remove = || request("DELETE", &format!("/v1/accounts/{id}/payment-method"), Some(&service()), None, None);
    for _ in 0..2 {
        let (s, b) = w.buy(remove()).await;
        assert!(s == 200 || s == 204, "{s} {b}");
    }
    let (s, page) = audit(&w, &staff("finance"), &format!("?account_id={id}&action=payment_method.remove")).await;
    assert_eq!(s, 200, "{page}");
    let list = page["records"].as_array().expect("records");
    assert_eq!(list.len(), 1, "{page}");
    assert_eq!(list[0]["before"]["payment_method"], card.as_str());
    assert_eq!((list[0]["after"]["payment_method"].clone(), list[0]["actor"]["role"].as_str()), (Value::Null, Some("service")));
}

/// A record edited in the table: the verify command names it (and the chains verify before).
#[tokio::test]
async fn the_verify_command_names_an_edited_record() {
    let w = World::new("usd-overage").await;
    let id = unique("verified");
    w.account(&id, "free").await;
    for i in 0..3 {
        assert_eq!(adjust(&w, &id, &staff("support"), C, &format!("k{i}")).await.0, 201);
    }
    let report = topup::audit::verify::verify_log(&w.credits.store, &[]).await.expect("verify");
    assert!(report.broken.is_empty(), "{report:?}");
    assert_eq!(report.records, 4);
    let (code, out) = verify_command(&w, &[]);
    assert_eq!(code, Some(0), "{out}");

    // Someone with access to the table changes the second adjustment's amount.
    let records = records_of(&w, &id).await;
    let edited = &records[2];
    let mut after = edited.after.clone().expect("after");
    after["amount"] = json!(1000 * C);
    w.dynamo
        .update_item()
        .table_name(&w.config.table)
        .key("pk", AttributeValue::S(format!("AUDIT#{id}")))
        .key("sk", AttributeValue::S(format!("SEQ#{:012}", edited.seq)))
        .update_expression("SET #after = :after")
        .expression_attribute_names("#after", "after")
        .expression_attribute_values(":after", topup::adapters::dynamo::to_attr(&after))
        .send()
        .await
        .expect("edit the record");
    let report = topup::audit::verify::verify_log(&w.credits.store, std::slice::from_ref(&id)).await.expect("verify");
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert_eq!(report.broken[0].record_id.as_deref(), Some(edited.id.as_str()));
    let (code, out) = verify_command(&w, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("BROKEN chain `{id}`: record {} (seq {})", edited.id, edited.seq)),
        "the command names the edited record: {out}"
    );
}

/// Runs `topup-audit-verify` (the command itself, through cargo) on this world's table.
fn verify_command(w: &World, ids: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["run", "-q", "-p", "reconcile", "--bin", "topup-audit-verify", "--"])
        .args(ids)
        .env("TOPUP_TABLE", &w.config.table)
        .env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("run topup-audit-verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// A refund by finance: made at Stripe once however often the request comes, recorded once as
/// finance's; the credits come back with `charge.refunded`.
#[tokio::test]
async fn finance_refunds_a_payment_once_and_the_log_says_who() {
    let w = World::new("usd-overage").await;
    let id = unique("refunded");
    w.account(&id, "free").await;
    let b = open_purchase(&w, &id, json!({"amount": 2000})).await;
    let paid = pay(b["checkout_session_id"].as_str().expect("id"), &[]).await;
    let (s, r) = w.deliver(&stripe_event("checkout.session.completed", paid.clone())).await;
    assert_eq!(s, 200, "{r}");
    let pi = paid["payment_intent"].as_str().expect("pi").to_string();
    let (s, list) = w.api(get(&format!("/v1/accounts/{id}/payments"), &staff("support"))).await;
    assert_eq!((s, list["payments"][0]["payment_id"].as_str()), (200, Some(pi.as_str())), "{list}");
    let before = w.view(&id).await["balance"].as_i64().expect("balance");

    let refund = json!({"amount": 500, "reason": "charged twice", "idempotency_key": "r1"});
    let path = format!("/v1/accounts/{id}/payments/{pi}/refund");
    let (s, made) = w.buy(post(&path, &staff("finance"), refund.clone())).await;
    assert_eq!((s, made["amount"].as_i64()), (201, Some(500)), "{made}");
    let (s, again) = w.buy(post(&path, &staff("finance"), refund.clone())).await;
    assert_eq!((s, &again["refund_id"]), (201, &made["refund_id"]), "the same refund");
    let (s, other) = w.buy(post(&path, &staff("finance"), json!({"amount": 600, "reason": "x", "idempotency_key": "r1"}))).await;
    assert_eq!((s, other["error"]["code"].as_str()), (409, Some("idempotency_conflict")));
    let (s, too_much) = w.buy(post(&path, &service(), json!({"amount": 2001, "reason": "x", "idempotency_key": "r2"}))).await;
    assert_eq!((s, too_much["error"]["code"].as_str()), (422, Some("invalid_amount")));
    let refunds = records_of(&w, &id).await.into_iter().filter(|r| r.action == "payment.refund").collect::<Vec<_>>();
    assert_eq!(refunds.len(), 1, "recorded once");
    assert_eq!((refunds[0].actor.role.as_str(), refunds[0].reason.as_deref()), ("finance", Some("charged twice")));
    assert_eq!(refunds[0].target, format!("payment:{pi}"));

    // Stripe's event takes the quarter of the credits back.
    let (_, intent) = local_stripe("GET", &format!("/v1/payment_intents/{pi}"), &[]).await;
    let charge_id = intent["latest_charge"].as_str().or_else(|| intent["latest_charge"]["id"].as_str()).expect("charge");
    let (_, charge) = local_stripe("GET", &format!("/v1/charges/{charge_id}"), &[]).await;
    assert_eq!(charge["amount_refunded"], 500, "one refund at Stripe");
    let (s, r) = w.deliver(&stripe_event("charge.refunded", charge)).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(w.view(&id).await["balance"].as_i64(), Some(before - before / 4));
}

/// Webhook endpoint changes (no account) and a redelivery (its event's account) are recorded
/// right after they succeed, as their callers'; secrets never are.
#[tokio::test]
async fn endpoint_changes_and_redeliveries_are_recorded() {
    let w = World::new("usd-overage").await;
    let id = unique("hooked");
    w.account(&id, "free").await;
    let (s, ep) = w.api(post("/v1/webhook-endpoints", &service(), json!({"url": "http://127.0.0.1:9/hook", "events": ["*"], "reason": "new receiver"}))).await;
    assert_eq!(s, 201, "{ep}");
    let ep_id = ep["id"].as_str().expect("id").to_string();
    let (s, _) = w.api(post(&format!("/v1/webhook-endpoints/{ep_id}/rotate-secret"), &service(), json!({}))).await;
    assert_eq!(s, 200);
    let unbound = w.credits.store.audit_chain(topup::audit::NO_ACCOUNT_CHAIN, 0, 100).await.expect("chain");
    let mine: Vec<_> = unbound.iter().filter(|r| r.target == format!("webhook_endpoint:{ep_id}")).collect();
    assert_eq!(mine.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), ["webhook_endpoint.create", "webhook_endpoint.rotate_secret"]);
    assert_eq!(mine[0].reason.as_deref(), Some("new receiver"));
    let text = serde_json::to_string(&unbound).expect("json");
    assert!(!text.contains(ep["secret"].as_str().expect("secret")), "no secret in the log");

    // A failed delivery of an event of the account, redelivered by support.
    let out = topup::webhooks::Outgoing {
        event_id: "evt_1".into(),
        kind: "balance.low",
        account_id: id.clone(),
        created_ms: w.now(),
        body: "{}".into(),
    };
    let mut d = topup::webhooks::Delivery::new(&ep_id, &out, w.now());
    d.status = "failed".into();
    d.attempts = 6;
    d.version = 1;
    use topup::webhooks::WebhookStore;
    assert!(w.webhooks.store.put_delivery(&d, None).await.expect("put"));
    let (s, b) = w.api(post(&format!("/v1/webhook-endpoints/{ep_id}/deliveries/{}/redeliver", d.id), &staff("support"), json!({"reason": "customer asked"}))).await;
    assert_eq!(s, 202, "{b}");
    let records = records_of(&w, &id).await;
    let last = records.last().expect("a record");
    assert_eq!((last.action.as_str(), last.actor.role.as_str()), ("webhook_delivery.redeliver", "support"));
    assert_eq!(last.before.as_ref().map(|b| b["status"].clone()), Some(json!("failed")));
    assert_eq!(last.reason.as_deref(), Some("customer asked"));
    let report = topup::audit::verify::verify_log(&w.credits.store, std::slice::from_ref(&id)).await.expect("verify");
    assert!(report.broken.is_empty(), "{report:?}");
}

/// What the console reads besides the customer's routes: search by id, first billing email or
/// Stripe customer (staff and the service; people of an account not at all), an account's
/// inner state, the ledger by kind, reconciliation's day, and the dead-letter queues' depths.
#[tokio::test]
async fn the_console_reads_find_accounts_and_what_else_it_shows() {
    let mut w = World::new("usd-overage").await;
    let id = unique("found");
    let email = format!("{id}@Example.com");
    let (s, b) = w.api(put(&format!("/v1/accounts/{id}"), &service(), json!({"plan": "free", "billing_contacts": [{"email": email}]}))).await;
    assert_eq!(s, 201, "{b}");
    let support = staff("support");
    let (s, found) = w.api(get(&format!("/v1/accounts?email={}", email.to_lowercase()), &support)).await;
    assert_eq!((s, found["accounts"][0]["account_id"].as_str()), (200, Some(id.as_str())), "{found}");
    let (_, none) = w.api(get("/v1/accounts?email=nobody@example.com", &support)).await;
    assert_eq!(none["accounts"], json!([]));
    let (_, by_id) = w.api(get(&format!("/v1/accounts?account_id={id}"), &support)).await;
    assert_eq!(by_id["accounts"][0]["account_id"].as_str(), Some(id.as_str()));
    w.edit_account(&id, |a| a.stripe_customer_id = Some(format!("cus_{id}"))).await;
    let (_, by_customer) = w.api(get(&format!("/v1/accounts?customer=cus_{id}"), &support)).await;
    assert_eq!(by_customer["accounts"][0]["account_id"].as_str(), Some(id.as_str()), "{by_customer}");
    assert_eq!(w.api(get("/v1/accounts?email=a@b.co&customer=cus_1", &support)).await.0, 400);
    assert_eq!(w.api(get(&format!("/v1/accounts?account_id={id}"), &person("owner", &id))).await.0, 403);

    // Details and the ledger by kind.
    assert_eq!(adjust(&w, &id, &service(), 4 * C, "d1").await.0, 201);
    assert_eq!(w.usage(&id, "api_calls", w.included(&id, "api_calls").await + 100).await.0, 200);
    let (s, details) = w.api(get(&format!("/v1/accounts/{id}/details"), &support)).await;
    assert_eq!((s, details["stripe_customer_id"].as_str()), (200, Some(format!("cus_{id}").as_str())), "{details}");
    assert_eq!(details["audit_head"]["seq"], 2);
    assert_eq!(w.api(get(&format!("/v1/accounts/{id}/details"), &person("owner", &id))).await.0, 403);
    let (_, adjustments) = w.api(get(&format!("/v1/accounts/{id}/credits/transactions?kind=adjustment"), &support)).await;
    let kinds: Vec<&str> = adjustments["transactions"].as_array().expect("list").iter().filter_map(|t| t["kind"].as_str()).collect();
    assert_eq!(kinds, ["adjustment"]);
    assert_eq!(w.api(get(&format!("/v1/accounts/{id}/credits/transactions?kind=lease_out"), &support)).await.0, 400);

    // Reconciliation's day, from its checkpoints.
    let (s, _) = w.api(get("/v1/reconciliation?run=1999-01-01", &support)).await;
    assert_eq!(s, 404);
    let day = topup::clock::date_of(w.now());
    w.credits.reconcile_run(&stripe_payments(), &day, credits_api::RECONCILE_SEGMENTS, None).await.expect("run");
    let (s, run) = w.api(get("/v1/reconciliation", &support)).await;
    assert_eq!((s, run["run"].as_str(), run["complete"].as_bool()), (200, Some(day.as_str()), Some(true)), "{run}");
    assert!(run["accounts"].as_u64().unwrap_or(0) >= 1);

    // Dead letters: each configured queue's depth.
    let q = w.sqs.create_queue().queue_name(unique("dlq")).send().await.expect("queue");
    let url = q.queue_url().expect("url").to_string();
    w.sqs.send_message().queue_url(&url).message_body("{}").send().await.expect("send");
    w.config.dead_letter_queues = vec![url.clone()];
    let (s, dl) = w.api(get("/v1/dead-letters", &staff("finance"))).await;
    assert_eq!((s, dl["queues"][0]["depth"].as_u64()), (200, Some(1)), "{dl}");
    assert_eq!(w.api(get("/v1/dead-letters", &person("admin", &id))).await.0, 403);
}
