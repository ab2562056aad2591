// The future of `run` with the Stripe and AWS clients nests deeply.
#![recursion_limit = "256"]
use lambda_http::{run, service_fn, tracing, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let ui = config.checkout_ui.clone().ok_or("TOPUP_BILLING_URL or TOPUP_CHECKOUT_RETURN_URL is required")?;
    let aws = aws_config::load_from_env().await;
    // The Stripe key from Secrets Manager, read now (init) and cached.
    let (payments, _) = topup::live_stripe(&config, &aws).await?;
    let credits = topup::live(&config, &aws);
    let checkout = purchase::Checkout { payments: &payments, ui: &ui };
    run(service_fn(|req: Request| async { Ok::<_, Error>(purchase::handle(&config, &credits, &checkout, req).await) }))
        .await
}
