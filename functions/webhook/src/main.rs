// The future of `run` with the Stripe and AWS clients nests deeply.
#![recursion_limit = "256"]
use lambda_http::{run, service_fn, tracing, Error, Request};
use topup::ApiError;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let aws = aws_config::load_from_env().await;
    // The Stripe key and the webhook's signing secret from Secrets Manager: read now (init),
    // cached, and read again after a while so a rotated secret is picked up.
    let (payments, secrets) = topup::live_stripe(&config, &aws).await?;
    if secrets.get().await?.webhook_secret.is_none() {
        return Err(Error::from("the Stripe secret has no `webhook_secret`"));
    }
    let credits = topup::live(&config, &aws);
    run(service_fn(|req: Request| async {
        let response = match secrets.get().await.map(|s| s.webhook_secret) {
            Ok(Some(secret)) => webhook::handle(&secret, &credits, &payments, req).await,
            // Stripe retries a 5xx: nothing is lost while the secret cannot be read.
            Ok(None) | Err(_) => topup::http::error_response(&ApiError::Upstream),
        };
        Ok::<_, Error>(response)
    }))
    .await
}
