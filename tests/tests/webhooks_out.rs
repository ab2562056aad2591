//! Webhooks out against the emulators (rules §15): endpoints through the served routes, events
//! from the bus delivered by the `webhooks-out` handler to a receiver on 127.0.0.1 over real
//! HTTP, follow-ups through a real SQS queue with real delays, delivery records in DynamoDB.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use topup::webhooks::api::MAX_ENDPOINTS;
use topup::webhooks::verify;
use topup_tests::*;

/// The count of live endpoints the table keeps beside them (`WEBHOOKS`/`COUNT`).
async fn live_count(w: &World) -> Option<i64> {
    let item = w
        .dynamo
        .get_item()
        .table_name(&w.config.table)
        .key("pk", AttributeValue::S("WEBHOOKS".into()))
        .key("sk", AttributeValue::S("COUNT".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item?;
    item.get("live").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

/// Registers endpoints `urls` all at once, each its own request; the status and body of each.
async fn register_at_once(w: &Arc<World>, urls: Vec<String>) -> Vec<(u16, Value)> {
    let runs: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let w = Arc::clone(w);
            tokio::spawn(async move {
                w.api(post("/v1/webhook-endpoints", &service(), json!({"url": url, "events": ["*"]}))).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for r in runs {
        out.push(r.await.expect("ran"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_endpoint_limit_holds_under_concurrent_creates_and_a_delete_frees_one_place() {
    let w = Arc::new(World::new("usd-overage").await);
    let tries = MAX_ENDPOINTS + 30;
    let all = register_at_once(&w, (0..tries).map(|i| format!("http://127.0.0.1:9/hook/{i}")).collect()).await;
    let made: Vec<&str> = all.iter().filter(|(s, _)| *s == 201).filter_map(|(_, b)| b["id"].as_str()).collect();
    assert_eq!(made.len(), MAX_ENDPOINTS, "at most the limit exists");
    for (s, b) in all.iter().filter(|(s, _)| *s != 201) {
        assert_eq!((*s, b["error"]["code"].as_str()), (422, Some("too_many_endpoints")), "{b}");
    }
    let (_, list) = w.api(get("/v1/webhook-endpoints", &service())).await;
    assert_eq!(list["webhook_endpoints"].as_array().map(Vec::len), Some(MAX_ENDPOINTS));
    assert_eq!(live_count(&w).await, Some(MAX_ENDPOINTS as i64));

    // Deleting one frees one place: of two creates at once, one is made.
    let path = format!("/v1/webhook-endpoints/{}", made[0]);
    let (s, _) = w.api(request("DELETE", &path, Some(&service()), None, None)).await;
    assert_eq!(s, 200);
    let (s, _) = w.api(request("DELETE", &path, Some(&service()), None, None)).await;
    assert_eq!(s, 404, "deleted once, counted once");
    let two = register_at_once(&w, vec!["http://127.0.0.1:9/a".into(), "http://127.0.0.1:9/b".into()]).await;
    let mut statuses: Vec<u16> = two.iter().map(|(s, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 422]);
    assert_eq!(live_count(&w).await, Some(MAX_ENDPOINTS as i64));
}

#[tokio::test]
async fn endpoints_stored_before_the_count_and_with_one_previous_secret_read_back_and_are_counted() {
    let w = World::new("usd-overage").await;
    let now = topup::clock::now_ms();
    // Three endpoints as the code before stored them: no count item, one rotated-out secret
    // in `previous_secret`, one endpoint deleted.
    for (i, status) in ["enabled", "disabled", "deleted"].iter().enumerate() {
        let old = json!({"id": format!("we_old{i}"), "url": format!("http://127.0.0.1:9/old/{i}"), "events": ["*"],
            "status": status, "secret": format!("whsec_old{i}"), "previous_secret": "whsec_before",
            "previous_until": now + 3_600_000, "description": null, "contact_email": null, "created_at": now,
            "failing_since": null, "last_failure_at": null, "disabled_at": null, "deleted_at": null, "version": 1,
            "pk": "WEBHOOKS", "sk": format!("EP#we_old{i}")});
        let item =
            old.as_object().expect("object").iter().map(|(k, v)| (k.clone(), topup::adapters::dynamo::to_attr(v)));
        w.dynamo.put_item().table_name(&w.config.table).set_item(Some(item.collect())).send().await.expect("put");
    }
    assert_eq!(live_count(&w).await, None);
    let (_, list) = w.api(get("/v1/webhook-endpoints", &service())).await;
    assert_eq!(list["webhook_endpoints"].as_array().map(Vec::len), Some(2), "{list}");
    let stored =
        topup::webhooks::WebhookStore::endpoint(&w.webhooks.store, "we_old0").await.expect("read").expect("kept");
    assert_eq!(stored.signing_secrets(now), ["whsec_old0", "whsec_before"], "the old secret still signs");

    // The first delete counts the live ones (two) and takes itself off; a create adds itself.
    let (s, _) = w.api(request("DELETE", "/v1/webhook-endpoints/we_old1", Some(&service()), None, None)).await;
    assert_eq!(s, 200);
    assert_eq!(live_count(&w).await, Some(1));
    register(&w, "http://127.0.0.1:9/new", json!(["*"])).await;
    assert_eq!(live_count(&w).await, Some(2));
    // A rotation keeps the old previous secret beside the one it replaces.
    let (s, _) = w.api(post("/v1/webhook-endpoints/we_old0/rotate-secret", &service(), json!({}))).await;
    assert_eq!(s, 200);
    let stored =
        topup::webhooks::WebhookStore::endpoint(&w.webhooks.store, "we_old0").await.expect("read").expect("kept");
    assert_eq!(stored.signing_secrets(now)[1..], ["whsec_old0", "whsec_before"]);
}

#[tokio::test]
async fn endpoints_are_registered_by_the_service_listed_without_secrets_and_private_addresses_refused() {
    let w = World::new("usd-overage").await;
    let made = register(&w, "https://hooks.example.com/topup", json!(["balance.low", "balance.alert"])).await;
    let id = made["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("we_"));
    assert!(made["secret"].as_str().is_some_and(|s| s.starts_with("whsec_") && s.len() > 40));
    assert_eq!(
        (made["url"].as_str(), made["status"].as_str()),
        (Some("https://hooks.example.com/topup"), Some("enabled"))
    );
    assert_eq!(made["events"], json!(["balance.low", "balance.alert"]));

    let (s, list) = w.api(get("/v1/webhook-endpoints", &service())).await;
    assert_eq!(s, 200);
    assert_eq!(list["webhook_endpoints"].as_array().map(Vec::len), Some(1));
    assert!(list["webhook_endpoints"][0].get("secret").is_none(), "the secret is shown once");
    let (s, one) = w.api(get(&format!("/v1/webhook-endpoints/{id}"), &service())).await;
    assert_eq!((s, one["id"].as_str()), (200, Some(id.as_str())));

    for (url, code) in [
        ("https://10.0.0.7/hook", "invalid_url"),
        ("https://192.168.1.20/hook", "invalid_url"),
        ("https://172.20.0.1/hook", "invalid_url"),
        ("https://169.254.169.254/latest/meta-data/", "invalid_url"),
        ("https://0.0.0.0/hook", "invalid_url"),
        ("https://[fd12::1]/hook", "invalid_url"),
        ("https://192.0.2.10/hook", "invalid_url"),
        ("https://[2001:db8::1]/hook", "invalid_url"),
        ("https://[2002:a00:7::1]/hook", "invalid_url"),
        ("https://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/hook", "invalid_url"),
        ("http://hooks.example.com/topup", "invalid_url"),
        ("not a url", "invalid_url"),
    ] {
        let (s, b) = w.api(post("/v1/webhook-endpoints", &service(), json!({"url": url, "events": ["*"]}))).await;
        assert_eq!((s, b["error"]["code"].as_str()), (422, Some(code)), "{url}: {b}");
    }
    let (s, b) = w
        .api(post("/v1/webhook-endpoints", &service(), json!({"url": "https://a.example.com", "events": ["nope"]})))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_event_type")));
    for body in [json!({"url": "https://a.example.com"}), json!({"events": ["*"]}), json!({"url": 5, "events": ["*"]})]
    {
        let (s, b) = w.api(post("/v1/webhook-endpoints", &service(), body.clone())).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "{body}");
    }
    // Only the service, with a token not bound to one account.
    for who in [
        person("owner", "acme"),
        token(json!({"sub": "b", "role": "service", "client_id": SERVICE_CLIENT_ID, "account_id": "acme"})),
    ] {
        let (s, _) = w.api(get("/v1/webhook-endpoints", &who)).await;
        assert_eq!(s, 403);
    }
    let (s, _) = w.api(request("GET", "/v1/webhook-endpoints", None, None, None)).await;
    assert_eq!(s, 401);
    let (s, _) = w.api(request("PUT", "/v1/webhook-endpoints", Some(&service()), None, None)).await;
    assert_eq!(s, 405);

    // Rotation: a new secret, shown once more.
    let (s, rotated) = w.api(post(&format!("/v1/webhook-endpoints/{id}/rotate-secret"), &service(), json!({}))).await;
    assert_eq!(s, 200, "{rotated}");
    assert_ne!(rotated["secret"], made["secret"]);

    let (s, b) = w.api(request("DELETE", &format!("/v1/webhook-endpoints/{id}"), Some(&service()), None, None)).await;
    assert_eq!((s, b), (200, json!({"id": id, "deleted": true})));
    let (s, b) = w.api(get(&format!("/v1/webhook-endpoints/{id}"), &service())).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("webhook_endpoint_not_found")));
    let (_, list) = w.api(get("/v1/webhook-endpoints", &service())).await;
    assert_eq!(list["webhook_endpoints"], json!([]));
    // The deleted endpoint's record stays for its deliveries' follow-ups, then expires (TTL).
    let item = w
        .dynamo
        .get_item()
        .table_name(&w.config.table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S("WEBHOOKS".into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(format!("EP#{id}")))
        .send()
        .await
        .expect("get")
        .item
        .expect("kept");
    let ttl: i64 = item.get("ttl").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).expect("a ttl");
    let days = (ttl - topup::clock::now_ms() / 1000) as f64 / 86_400.0;
    assert!((30.9..31.1).contains(&days), "{days} days");
}

#[tokio::test]
async fn a_debit_crossing_two_alert_thresholds_delivers_each_event_once_signed() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    let receiver = Receiver::start(&[]).await;
    let made = register(&w, &receiver.url, json!(["balance.alert"])).await;
    let secret = made["secret"].as_str().expect("secret").to_string();
    let everything = Receiver::start(&[]).await;
    register(&w, &everything.url, json!(["*"])).await;
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 20 * C).await;
    let (s, _) =
        w.api(put("/v1/accounts/acme/credits/alerts", &service(), json!({"thresholds": [15 * C, 10 * C]}))).await;
    assert_eq!(s, 200);
    assert_eq!(w.usage("acme", "api_calls", 11_000).await.0, 200); // $20 → $9

    // The bus delivers at least once: every event is handed over twice.
    let events = observer.drain(Duration::from_secs(2)).await;
    let d = dispatcher(&w);
    for e in events.iter().chain(events.iter()) {
        webhooks_out::handle(&d, &topup_tests::invocation(e), topup::clock::now_ms).await.expect("delivered");
    }
    let got = receiver.got();
    let mut thresholds: Vec<i64> = got.iter().filter_map(|(_, b, _)| b["data"]["threshold"].as_i64()).collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [10 * C, 15 * C], "each crossing once: {got:?}");
    let now_s = topup::clock::now_ms() / 1000;
    for (sig, body, raw) in &got {
        assert_eq!(body["type"], "balance.alert");
        assert_eq!(body["account_id"], "acme");
        assert_eq!(body["data"]["balance"], 9 * C);
        assert!(body["id"].as_str().is_some_and(|i| i.starts_with("evt_")) && body["created"].as_i64().is_some());
        assert!(verify(&secret, sig, raw, now_s, 300), "signed with the endpoint's secret");
    }
    // The `*` endpoint got the same two alerts (and nothing twice).
    let all = everything.got();
    let ids: std::collections::HashSet<String> = all.iter().map(|(_, b, _)| b["id"].to_string()).collect();
    assert_eq!(ids.len(), all.len(), "no event twice");
    assert_eq!(all.iter().filter(|(_, b, _)| b["type"] == "balance.alert").count(), 2);
    // Their follow-ups find every delivery done and send nothing.
    run_follow_ups(&w, &dispatcher(&w), Duration::from_secs(3)).await;
    assert_eq!(receiver.got().len(), 2);
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_the_event_four_times_with_one_id_and_the_record_shows_it() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    let receiver = Receiver::start(&[500, 500, 500]).await;
    let made = register(&w, &receiver.url, json!(["balance.low", "balance.depleted"])).await;
    let id = made["id"].as_str().expect("id").to_string();
    let secret = made["secret"].as_str().expect("secret").to_string();
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 6 * C).await;
    assert_eq!(w.usage("acme", "api_calls", 2_000).await.0, 200); // $6 → $4: below the $5 low threshold

    let events = observer.drain(Duration::from_secs(2)).await;
    let low = of_type(&events, "BalanceLow");
    assert_eq!(low.len(), 1);
    let d = dispatcher(&w);
    webhooks_out::handle(&d, &topup_tests::invocation(low[0]), topup::clock::now_ms).await.expect("first attempt");
    assert_eq!(receiver.got().len(), 1);
    // The retries come from the queue: after 1 s, 1 s and 2 s.
    let started = std::time::Instant::now();
    let handed = run_follow_ups(&w, &dispatcher(&w), Duration::from_secs(4)).await;
    let got = receiver.got();
    assert_eq!(got.len(), 4, "500, 500, 500, then 200: {got:?}");
    assert!(handed >= 4, "three retries and the last one's follow-up");
    assert!(started.elapsed() >= Duration::from_secs(4), "each retry waited for its delay");
    let event_id = low[0]["detail"]["event_id"].as_str().expect("event id");
    for (sig, body, raw) in &got {
        assert_eq!(body["id"], event_id, "a retry carries the same id");
        assert_eq!(raw, &got[0].2, "and the same body");
        assert!(verify(&secret, sig, raw, topup::clock::now_ms() / 1000, 300));
    }
    let (s, page) = w.api(get(&format!("/v1/webhook-endpoints/{id}/deliveries"), &service())).await;
    assert_eq!(s, 200, "{page}");
    let rec = &page["deliveries"][0];
    assert_eq!(page["deliveries"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        (rec["status"].as_str(), rec["attempts"].as_i64(), rec["last_response_code"].as_i64()),
        (Some("succeeded"), Some(4), Some(200)),
        "{rec}"
    );
    assert_eq!((rec["event_id"].as_str(), rec["type"].as_str()), (Some(event_id), Some("balance.low")));

    // Manual redelivery: 202, and the same event once more.
    let did = rec["id"].as_str().expect("delivery id");
    let (s, b) =
        w.api(post(&format!("/v1/webhook-endpoints/{id}/deliveries/{did}/redeliver"), &service(), json!({}))).await;
    assert_eq!((s, b["status"].as_str()), (202, Some("pending")), "{b}");
    run_follow_ups(&w, &dispatcher(&w), Duration::from_secs(3)).await;
    let got = receiver.got();
    assert_eq!(got.len(), 5);
    assert_eq!(got[4].1["id"], event_id);
    let (_, page) = w.api(get(&format!("/v1/webhook-endpoints/{id}/deliveries"), &service())).await;
    assert_eq!(
        (page["deliveries"][0]["status"].as_str(), page["deliveries"][0]["attempts"].as_i64()),
        (Some("succeeded"), Some(5))
    );
    let (s, b) = w
        .api(post(
            &format!("/v1/webhook-endpoints/{id}/deliveries/wd_0000000000000_evt_none/redeliver"),
            &service(),
            json!({}),
        ))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("webhook_delivery_not_found")));
}

#[tokio::test]
async fn a_receiver_that_never_answers_2xx_leaves_a_failed_delivery_after_the_window() {
    let mut w = World::new("usd-overage").await;
    w.config.webhooks.retry_window_s = 3;
    let receiver = Receiver::start(&[503; 10]).await;
    let made = register(&w, &receiver.url, json!(["*"])).await;
    let id = made["id"].as_str().expect("id").to_string();
    let event = json!({"detail-type": "GrantExpired", "detail": {"grant_id": "grt_1", "expired": 5, "expires_at": "x",
        "balance": 0, "event_id": "evt_window", "account_id": "acme", "occurred_at": "x", "occurred_ms": topup::clock::now_ms()}});
    let d = dispatcher(&w);
    webhooks_out::handle(&d, &topup_tests::invocation(&event), topup::clock::now_ms).await.expect("first attempt");
    run_follow_ups(&w, &dispatcher(&w), Duration::from_secs(4)).await;
    // 0, +1 s, +1 s (at 2 s); +2 s would pass the 3 s window.
    assert_eq!(receiver.got().len(), 3);
    let (_, page) = w.api(get(&format!("/v1/webhook-endpoints/{id}/deliveries"), &service())).await;
    let rec = &page["deliveries"][0];
    assert_eq!(
        (rec["status"].as_str(), rec["attempts"].as_i64(), rec["last_response_code"].as_i64(), rec["type"].as_str()),
        (Some("failed"), Some(3), Some(503), Some("grant.expired")),
        "{rec}"
    );
    assert_eq!(rec["next_attempt_at"], Value::Null);
}
