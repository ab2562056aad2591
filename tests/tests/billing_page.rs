//! `GET /billing`: the static billing page, with its public configuration injected
//! and a Content-Security-Policy; no token needed to load it, none inside it. What it does in a
//! browser is tested in headless Chromium (`tests/browser/billing_test.py`).

use lambda_http::Body;
use topup_tests::*;

#[tokio::test]
async fn the_billing_page_is_served_with_its_configuration_and_a_policy() {
    let mut w = World::new("voice-minutes").await;
    w.config.stripe_publishable_key = Some("pk_test_</script><b>".into());
    w.config.stripe_api_base = Some("http://127.0.0.1:8420".into());
    let resp =
        credits_api::handle(&w.config, &w.webhooks, &w.credits, request("GET", "/billing", None, None, None)).await;
    assert_eq!(resp.status(), 200);
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("default-src 'self'")
            && csp.contains("connect-src 'self' https://api.stripe.com http://127.0.0.1:8420"),
        "{csp}"
    );
    let Body::Text(html) = resp.body() else { panic!("text body") };
    assert!(html.contains("<h2 id=\"credits-title\">Credits</h2>"));
    assert!(!html.contains("__TOPUP_PAGE_CONFIG__"));
    // The injected JSON cannot close its script element.
    assert!(html.contains(r#""stripe_publishable_key":"pk_test_\u003c/script>\u003cb>""#), "escaped");
    assert!(html.contains(r#""stripe_emulator":"http://127.0.0.1:8420""#));
    assert!(!html.contains("sk_test"), "no secret in the page");
    // Stripe's own API is not an emulator.
    w.config.stripe_api_base = Some("https://api.stripe.com".into());
    let resp =
        credits_api::handle(&w.config, &w.webhooks, &w.credits, request("GET", "/billing", None, None, None)).await;
    let Body::Text(html) = resp.body() else { panic!("text body") };
    assert!(html.contains(r#""stripe_emulator":null"#));
    let resp =
        credits_api::handle(&w.config, &w.webhooks, &w.credits, request("POST", "/billing", None, None, None)).await;
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn the_card_script_is_the_packaged_card_served_as_a_module() {
    let w = World::new("usd-overage").await;
    let resp = credits_api::handle(
        &w.config,
        &w.webhooks,
        &w.credits,
        request("GET", "/billing/topup-credits.js", None, None, None),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(header("content-type"), "text/javascript; charset=utf-8");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let Body::Text(js) = resp.body() else { panic!("text body") };
    // The built card of sdks/typescript (its tests check that this copy is the build's).
    let packaged = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/credits-api/src/topup-credits.js"),
    )
    .expect("the card's copy");
    assert_eq!(js, &packaged);
    assert!(js.contains("customElements.define(name, TopupCreditsElement)"));
    assert!(!js.contains("sk_test"), "nothing secret in it");
    let resp = credits_api::handle(
        &w.config,
        &w.webhooks,
        &w.credits,
        request("POST", "/billing/topup-credits.js", None, None, None),
    )
    .await;
    assert_eq!(resp.status(), 405);
}
