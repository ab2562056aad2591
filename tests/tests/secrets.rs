//! The Stripe secrets come from Secrets Manager (rules §13), read once and cached, and a
//! rotation is picked up without a redeploy; against the emulator.

use std::sync::Arc;
use std::time::Duration;

use topup::adapters::secrets::SecretSource;
use topup::payments::{NewCustomer, Payments};
use topup_tests::*;

#[tokio::test]
async fn the_stripe_key_is_read_from_secrets_manager_cached_and_rotated() {
    let aws = aws_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&aws);
    let name = unique("stripe");
    sm.create_secret()
        .name(&name)
        .secret_string(r#"{"secret_key":"sk_test_first","webhook_secret":"whsec_first"}"#)
        .send()
        .await
        .expect("create secret");
    let source = Arc::new(SecretSource::new(sm.clone(), &name).refreshing_every(Duration::from_millis(200)));
    let first = source.get().await.expect("read");
    assert_eq!(
        (first.secret_key.expose(), first.webhook_secret.as_ref().map(|s| s.expose())),
        ("sk_test_first", Some("whsec_first"))
    );
    assert_eq!(format!("{first:?}").matches("***").count(), 2, "never printed: {first:?}");

    // Rotated in Secrets Manager: the cached value serves until it is due, then the new one.
    sm.put_secret_value()
        .secret_id(&name)
        .secret_string(r#"{"secret_key":"sk_test_second","webhook_secret":"whsec_second"}"#)
        .send()
        .await
        .expect("rotate");
    assert_eq!(source.get().await.expect("cached").secret_key.expose(), "sk_test_first");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = source.get().await.expect("read again");
    assert_eq!(second.webhook_secret.as_ref().map(|s| s.expose()), Some("whsec_second"));

    // The Stripe client built on the source talks to Stripe with the current key.
    let payments = topup::adapters::stripe::StripePayments::rotating(
        source.clone(),
        std::env::var("TOPUP_TEST_STRIPE_API_BASE").ok().as_deref(),
    );
    let customer = NewCustomer { email: None, idempotency_key: unique("cus"), metadata: vec![] };
    assert!(payments.create_customer(&customer).await.expect("customer").starts_with("cus_"));

    // Secrets Manager unreachable for this secret: the value read before keeps serving.
    sm.delete_secret().secret_id(&name).force_delete_without_recovery(true).send().await.expect("delete");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(source.get().await.expect("stale but known").secret_key.expose(), "sk_test_second");
    // A source that never read it has nothing to fall back on: a clear error, no value.
    let e = SecretSource::new(sm, &name).get().await.expect_err("gone");
    assert!(e.to_string().contains(&name) && !e.to_string().contains("sk_test"), "{e}");
}

#[tokio::test]
async fn a_secret_that_is_not_the_expected_json_is_refused_without_echoing_it() {
    let aws = aws_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&aws);
    let name = unique("stripe");
    sm.create_secret().name(&name).secret_string("sk_live_pasted_raw").send().await.expect("create");
    let e = SecretSource::new(sm, &name).get().await.expect_err("not JSON");
    assert!(e.to_string().contains("secret_key") && !e.to_string().contains("sk_live"), "{e}");
}
