//! A purchase of credits and its life (SPEC §5, §7): `pending` when recorded, `processing`
//! while a bank debit settles, then `succeeded` (credited once), `failed` or `expired`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::clock;
use crate::money::{Cents, Micros};

/// seed 000: the notice while an asynchronous payment settles.
pub const PROCESSING_MESSAGE: &str = "Your payment is processing. We'll email you when it completes.";
/// seed 000: the notice when a payment fails.
pub const FAILED_MESSAGE: &str = "We couldn't confirm your payment. Please try again.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseStatus {
    Pending,
    Processing,
    Succeeded,
    Failed,
    Expired,
}

impl PurchaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseStatus::Pending => "pending",
            PurchaseStatus::Processing => "processing",
            PurchaseStatus::Succeeded => "succeeded",
            PurchaseStatus::Failed => "failed",
            PurchaseStatus::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    pub purchase_id: String,
    pub account_id: String,
    pub status: PurchaseStatus,
    pub charge: Cents,
    pub currency: String,
    pub credits: Micros,
    pub description: String,
    /// Hash of what was asked for, so a retried `Idempotency-Key` can be told from a new request.
    pub request_hash: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub checkout_session_id: Option<String>,
    pub payment_intent_id: Option<String>,
    /// The ledger entry that credited it.
    pub transaction_id: Option<String>,
}

impl PurchaseRecord {
    /// The seed's sentence for the state, where one exists.
    pub fn message(&self) -> Option<&'static str> {
        match self.status {
            PurchaseStatus::Processing => Some(PROCESSING_MESSAGE),
            PurchaseStatus::Failed => Some(FAILED_MESSAGE),
            _ => None,
        }
    }

    /// The purchase as the API shows it (SPEC §11).
    pub fn to_json(&self) -> Value {
        json!({
            "purchase_id": self.purchase_id,
            "status": self.status.as_str(),
            "message": self.message(),
            "charge": {"amount": self.charge.0, "currency": self.currency},
            "credits": self.credits.0,
            "checkout_session_id": self.checkout_session_id,
            "transaction_id": self.transaction_id,
            "created_at": clock::rfc3339(self.created_at),
        })
    }
}

/// A purchase id: derived from the account and the client's `Idempotency-Key`, so a retry
/// names the same purchase; random without a key.
pub fn purchase_id(account_id: &str, idempotency_key: Option<&str>) -> String {
    match idempotency_key {
        Some(key) => {
            let d = Sha256::digest(format!("{account_id}\u{0}{key}").as_bytes());
            let hex: String = d.iter().take(12).map(|b| format!("{b:02x}")).collect();
            format!("pur_{hex}")
        }
        None => crate::ledger::new_id("pur"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_key_and_account() {
        assert_eq!(purchase_id("a", Some("k")), purchase_id("a", Some("k")));
        assert_ne!(purchase_id("a", Some("k")), purchase_id("b", Some("k")));
        assert_ne!(purchase_id("a", None), purchase_id("a", None));
        assert!(purchase_id("a", Some("k")).starts_with("pur_"));
    }
}
