//! What `topup-audit-verify` runs: the audit log's chains verified over the table (rules §19).

use topup::adapters::dynamo::DynamoStore;
use topup::audit::verify::{verify_log, Report};

/// Verifies the chains of `accounts` (every account when empty) and of no account, in the
/// table `TOPUP_TABLE` (`topup` by default).
pub async fn run(accounts: &[String]) -> Result<Report, Box<dyn std::error::Error>> {
    let table = std::env::var("TOPUP_TABLE").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "topup".into());
    let aws = aws_config::load_from_env().await;
    verify_with(&DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table), accounts).await
}

/// The same over a store of the caller's.
pub async fn verify_with(store: &DynamoStore, accounts: &[String]) -> Result<Report, Box<dyn std::error::Error>> {
    Ok(verify_log(store, accounts).await?)
}
