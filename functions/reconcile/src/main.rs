// The future of `run` with the Stripe and AWS clients nests deeply.
#![recursion_limit = "256"]
use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let aws = aws_config::load_from_env().await;
    // The Stripe key from Secrets Manager, read now (init) and cached.
    let secrets = topup::stripe_secrets(&config, &aws)?;
    secrets.get().await?;
    let payments = topup::live_payments(&config, secrets);
    let credits = topup::live(&config, &aws);
    let (credits, payments) = (&credits, &payments);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        // Stop with a minute to spare (or a quarter of what is left) before the deadline; the
        // next scheduled invocation goes on from the checkpoints.
        let left_ms = event.context.deadline.saturating_sub(u64::try_from(topup::clock::now_ms()).unwrap_or(0));
        let deadline = (left_ms > 0).then(|| {
            std::time::Instant::now() + std::time::Duration::from_millis(left_ms - (left_ms / 4).min(60_000))
        });
        let report = reconcile::scheduled(credits, payments, &event.payload, deadline).await?;
        let problems = reconcile::log_report(&report, reconcile::GRACE_S);
        if report.worked {
            topup::metrics::emit(
                credits.stack(),
                &[
                    ("ReconcileProblems", problems as f64, "Count"),
                    ("ReconcileUnreadableAccounts", (report.unreadable.len() + report.unreadable_not_listed) as f64, "Count"),
                ],
            );
        }
        if reconcile::fails(&report, problems) {
            return Err(Error::from(format!(
                "reconciliation found {problems} differences that need a person and {} unreadable accounts (see the log)",
                report.unreadable.len() + report.unreadable_not_listed
            )));
        }
        Ok(report)
    }))
    .await
}
