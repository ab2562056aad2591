//! `topup-reconcile [ACCOUNT_ID...]`: reconciles the named accounts (or every account) with the
//! same configuration as the functions (`TOPUP_*`, AWS credentials and `AWS_ENDPOINT_URL`),
//! prints the report as JSON, and exits 1 when a difference needs a person (2 when it could not
//! run). `TOPUP_RECONCILE_GRACE_S` sets how long a lagging difference is tolerated (3600).
#![recursion_limit = "256"]
use std::process::ExitCode;


#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("topup-reconcile: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<usize, Box<dyn std::error::Error>> {
    let grace = match std::env::var("TOPUP_RECONCILE_GRACE_S") {
        Ok(s) => s.parse::<i64>().map_err(|_| "TOPUP_RECONCILE_GRACE_S must be a number of seconds")?,
        Err(_) => reconcile::GRACE_S,
    };
    let config = topup::Config::from_env()?;
    let aws = aws_config::load_from_env().await;
    let (payments, _) = topup::live_stripe(&config, &aws).await?;
    let credits = topup::live(&config, &aws);
    let ids: Vec<String> = std::env::args().skip(1).collect();
    let mut reports = Vec::new();
    if ids.is_empty() {
        reports.push(reconcile::reconcile(&credits, &payments, None).await?);
    }
    for id in &ids {
        reports.push(reconcile::reconcile(&credits, &payments, Some(id)).await?);
    }
    let mut problems = 0;
    for r in &reports {
        problems += r.differences.iter().filter(|d| d.is_problem(grace)).count();
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(problems)
}
