//! The SAM template: never the local-auth secret, and every HTTP route it declares is one
//! the named function serves (the local router reads the same routes).

use topup_tests::*;

fn template() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    std::fs::read_to_string(path).expect("infra/template.yaml")
}

#[test]
fn the_template_never_sets_the_local_jwt_secret() {
    let t = template();
    assert!(!t.contains("TOPUP_LOCAL_JWT_SECRET"), "the deployed functions must only trust API Gateway's authorizer");
    assert!(t.contains("DefaultAuthorizer: Jwt"));
    // Outside the authorizer only Stripe's endpoint, which verifies signatures itself, and the
    // static billing page, which carries no data.
    assert_eq!(t.matches("Authorizer: NONE").count(), 2);
    assert!(
        t.contains("TOPUP_STRIPE_WEBHOOK_SECRET: !Sub \"{{resolve:secretsmanager:"),
        "the webhook secret is not in the template"
    );
    for must in [
        "provided.al2023",
        "arm64",
        "rust-cargolambda",
        "PointInTimeRecoveryEnabled: true",
        "AttributeName: ttl",
        "PAY_PER_REQUEST",
    ] {
        assert!(t.contains(must), "template lacks {must}");
    }
    assert!(
        !t.contains("Action: \"*\"") && !t.contains("Action: '*'") && !t.contains("- \"*\""),
        "no wildcard actions"
    );
}

/// Issue 6: every function has an errors and a throttles alarm; both dead-letter queues have a
/// depth alarm; every alarm notifies the topic.
#[test]
fn every_function_and_dead_letter_queue_is_watched() {
    let t = template();
    let lines: Vec<&str> = t.lines().collect();
    let functions: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[1].trim() == "Type: AWS::Serverless::Function")
        .map(|w| w[0].trim().trim_end_matches(':'))
        .collect();
    assert_eq!(functions.len(), 7, "{functions:?}");
    for f in &functions {
        for metric in ["Errors", "Throttles"] {
            assert!(t.contains(&format!("  {f}{metric}Alarm:\n")), "{f} has no {metric} alarm");
        }
    }
    for q in ["AutoRechargeDeadLetters", "NotifyDeadLetters"] {
        assert!(t.contains(&format!("  {q}Alarm:\n")), "{q} has no depth alarm");
    }
    let alarms = t.matches("Type: AWS::CloudWatch::Alarm").count();
    assert_eq!(alarms, 7 * 2 + 2 + 1, "function alarms, dead-letter alarms, EventBridge failures");
    assert_eq!(t.matches("AlarmActions: [!Ref AlarmTopic]").count(), alarms, "every alarm notifies");
}

/// (binary, method, path) for every HttpApi event in the template.
fn routes() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let (mut binary, mut path) = (String::new(), String::new());
    for line in template().lines() {
        let l = line.trim();
        if let Some(b) = l.strip_prefix("Binary: ") {
            binary = b.trim().to_string();
        } else if let Some(p) = l.strip_prefix("Path: ") {
            path = p.trim().to_string();
        } else if let Some(m) = l.strip_prefix("Method: ") {
            out.push((binary.clone(), m.trim().to_string(), path.clone()));
        }
    }
    out
}

#[tokio::test]
async fn every_template_route_is_served_by_its_function() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let routes = routes();
    assert_eq!(routes.len(), 15, "{routes:?}");
    for (binary, method, path) in routes {
        let concrete =
            path.replace("{account_id}", "acme").replace("{hold_id}", "hold_x").replace("{purchase_id}", "pur_x");
        let req = request(&method, &concrete, Some(&service()), Some("application/json"), Some("{}".into()));
        if path == "/billing" {
            // The one route that answers HTML.
            let resp = credits_api::handle(&w.config, &w.credits, req).await;
            assert_eq!((binary.as_str(), resp.status().as_u16()), ("credits-api", 200));
            continue;
        }
        let (status, body) = match binary.as_str() {
            "debit" => w.debit(req).await,
            "credits-api" => w.api(req).await,
            "purchase" => w.buy(req).await,
            "webhook" => w.webhook(req).await,
            other => panic!("unknown binary {other}"),
        };
        assert_ne!(body["error"]["code"], "route_not_found", "{method} {path} → {binary}");
        assert_ne!(status, 405, "{method} {path} → {binary}");
    }
}

/// infra/openapi.yaml documents exactly the template's routes, with the same methods (the
/// served API is fuzzed against it by `./scripts/test`).
#[test]
fn the_openapi_document_lists_every_route_and_no_other() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/openapi.yaml");
    let doc = std::fs::read_to_string(path).expect("infra/openapi.yaml");
    let mut documented = std::collections::BTreeSet::new();
    let mut current = String::new();
    for line in doc.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            current = format!("/{p}");
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "put", "post", "delete", "patch"].contains(&m) && !current.is_empty() {
                documented.insert((m.to_uppercase(), current.clone()));
            }
        } else if !line.starts_with(' ') {
            current.clear();
        }
    }
    let served: std::collections::BTreeSet<_> = routes().into_iter().map(|(_, m, p)| (m, p)).collect();
    assert_eq!(documented, served);
}
