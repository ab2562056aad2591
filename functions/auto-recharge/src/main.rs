// The future of `run` with the Stripe and AWS clients nests deeply.
#![recursion_limit = "256"]
use auto_recharge::Trigger;
use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let aws = aws_config::load_from_env().await;
    // The Stripe key from Secrets Manager, read now (init) and cached.
    let (payments, _) = topup::live_stripe(&config, &aws).await?;
    let credits = topup::live(&config, &aws);
    let (credits, payments) = (&credits, &payments);
    run(service_fn(move |event: LambdaEvent<Trigger>| async move {
        // Stop the sweep with 20 s to spare before the invocation's deadline.
        let deadline = topup::clock::stop_before(event.context.deadline, 20_000);
        auto_recharge::handle_until(credits, payments, &event.payload, deadline).await.map_err(Error::from)
    }))
    .await
}
