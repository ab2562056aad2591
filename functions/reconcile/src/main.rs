// The future of `run` with the Stripe and AWS clients nests deeply.
#![recursion_limit = "256"]
use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let payments = topup::live_payments(&config)?;
    let aws = aws_config::load_from_env().await;
    let credits = topup::live(&config, &aws);
    let (credits, payments) = (&credits, &payments);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let report = reconcile::reconcile(credits, payments, &event.payload).await?;
        match reconcile::log_report(&report, reconcile::GRACE_S) {
            0 => Ok(report),
            n => Err(Error::from(format!("reconciliation found {n} differences that need a person (see the log)"))),
        }
    }))
    .await
}
