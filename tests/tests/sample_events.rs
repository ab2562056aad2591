//! The sample events in `events/` (API Gateway HTTP API payloads with JWT authorizer claims,
//! EventBridge events for `notify`, `reconcile` and `webhooks-out`, and an SQS batch for
//! `webhooks-out`) run through the handlers in the order of `events/expected.json`, each with its status.
//! The same files drive `cargo lambda invoke` in `./scripts/test`.

use topup_tests::*;

#[tokio::test]
async fn every_sample_event_answers_its_expected_status() {
    // usd-overage: the samples' member is refused the credits view (owners and admins only).
    let w = World::new("usd-overage").await;
    let ses = aws_sdk_sesv2::Client::new(&w.aws);
    let _ = ses.create_email_identity().email_identity("example.com").send().await; // may exist
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    let manifest: Vec<(String, u16)> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"))
            .expect("manifest");
    let listed: std::collections::BTreeSet<_> = manifest.iter().map(|(f, _)| f.clone()).collect();
    let on_disk: std::collections::BTreeSet<_> = std::fs::read_dir(&dir)
        .expect("events dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".json") && n != "expected.json")
        .collect();
    assert_eq!(listed, on_disk, "every sample event is listed in expected.json");
    for (file, expected) in manifest {
        let text = std::fs::read_to_string(dir.join(&file)).expect("sample");
        if file.starts_with("notify-") {
            // An EventBridge event: 200 stands for "handled".
            // Read as the function's runtime reads it: the typed EventBridge event.
            let event: notify::EventBridgeEvent<serde_json::Value> = serde_json::from_str(&text).expect("an EventBridge event");
            let notifier = topup::live_notifier(&w.config, &w.aws).expect("notifier");
            let report = notify::handle(&notifier, &event).await.unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!((expected, report["kind"].as_str()), (200, Some("credit_balance_low")), "{file}: {report}");
            continue;
        }
        if file.starts_with("reconcile-") {
            // The daily run over the table: 200 stands for "the books agree".
            let account = match serde_json::from_str::<reconcile::Invocation>(&text).expect("a reconcile invocation") {
                reconcile::Invocation::Account { account_id } => Some(account_id),
                reconcile::Invocation::Scheduled(_) => None,
            };
            let report = reconcile::reconcile(&w.credits, &stripe_payments(), account.as_deref())
                .await
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            let problems = reconcile::log_report(&report, reconcile::GRACE_S);
            assert_eq!((expected, problems), (200, 0), "{file}: {:?}", report.differences);
            continue;
        }
        if file.starts_with("webhooks-out-") {
            // An EventBridge event or an SQS batch of follow-ups: 200 stands for "handled, no
            // record to receive again" (no endpoint is registered, and a follow-up for a
            // delivery that does not exist is done).
            let event: webhooks_out::Invocation = serde_json::from_str(&text).expect("an SQS batch or an EventBridge event");
            let d = topup::live_dispatcher(&w.config, &w.aws).expect("dispatcher");
            let reply = webhooks_out::handle(&d, &event, topup::clock::now_ms).await.unwrap_or_else(|e| panic!("{file}: {e}"));
            if matches!(event, webhooks_out::Invocation::Queue(_)) {
                assert_eq!(reply["batchItemFailures"], serde_json::json!([]), "{file}");
            }
            assert_eq!(expected, 200, "{file}");
            continue;
        }
        let req = lambda_http::request::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (status, body) = match file.split('-').next() {
            Some("debit") => w.debit(req).await,
            Some("purchase") => w.buy(req).await,
            Some("webhook") => w.webhook(req).await,
            _ => w.api(req).await,
        };
        assert_eq!(status, expected, "{file}: {body}");
    }
    w.assert_invariants("acme").await;
}
