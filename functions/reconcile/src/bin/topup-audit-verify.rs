//! `topup-audit-verify [ACCOUNT_ID...]`: verifies the audit log's hash chains (rules §19) — the
//! chain of changes of no account, and each account's (the named ones, or every account) —
//! in the table `TOPUP_TABLE` (`topup` by default) with the AWS credentials and
//! `AWS_ENDPOINT_URL` of the environment. Prints one line per chain that does not verify,
//! naming its first record that does not (`BROKEN chain `acme`: record audit_… (seq 3) does not
//! verify: …`), then the report as JSON. Exits 0 when every chain verifies, 1 when one does
//! not, 2 when it could not run.
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let ids: Vec<String> = std::env::args().skip(1).collect();
    match reconcile::audit_verify::run(&ids).await {
        Ok(report) => {
            for b in &report.broken {
                println!("BROKEN {b}");
            }
            match serde_json::to_string(&report) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("topup-audit-verify: {e}"),
            }
            if report.broken.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("topup-audit-verify: {e}");
            ExitCode::from(2)
        }
    }
}
