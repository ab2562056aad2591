// The future of `run` with the Stripe and AWS clients nests deeply.
#![recursion_limit = "256"]
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
    run(service_fn(move |event: LambdaEvent<reconcile::Invocation>| async move {
        // Stop with a minute to spare before the deadline; the next scheduled invocation goes
        // on from the checkpoints.
        let deadline = topup::clock::stop_before(event.context.deadline, 60_000);
        let report = reconcile::scheduled(credits, payments, &event.payload, deadline).await?;
        let problems = reconcile::log_report(&report, reconcile::GRACE_S);
        if report.worked {
            topup::metrics::emit(
                credits.stack(),
                &[
                    ("ReconcileProblems", problems as f64, "Count"),
                    ("ReconcileUnreadableAccounts", (report.unreadable_count()) as f64, "Count"),
                ],
            );
        }
        if reconcile::fails(&report, problems) {
            return Err(Error::from(format!(
                "reconciliation found {problems} differences that need a person and {} unreadable accounts (see the log)",
                report.unreadable_count()
            )));
        }
        Ok(report)
    }))
    .await
}
