// The future of `run` with the Stripe and AWS clients nests deeply.
#![recursion_limit = "256"]
use lambda_http::{run, service_fn, tracing, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let secret = config.stripe_webhook_secret.clone().ok_or("TOPUP_STRIPE_WEBHOOK_SECRET is required")?;
    let payments = topup::live_payments(&config)?;
    let aws = aws_config::load_from_env().await;
    let credits = topup::live(&config, &aws);
    run(service_fn(|req: Request| async { Ok::<_, Error>(webhook::handle(&secret, &credits, &payments, req).await) }))
        .await
}
