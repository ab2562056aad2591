//! Ids that are easy to mix up, as types: a client's idempotency key (checked once, where it
//! enters), a purchase's id and a recharge's id. An account id stays a string: every operation
//! takes it first, by name, and the HTTP edge checks it (`http::check_id`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// A client-chosen idempotency key: 1 to 255 printable ASCII characters, no spaces. Only
/// `parse` makes one, so an operation that takes a key never sees an unchecked one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks `key`, naming `field` in the error.
    pub fn parse(field: &str, key: &str) -> Result<IdempotencyKey, ApiError> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(ApiError::invalid(format!("`{field}` must be 1 to 255 printable characters without spaces.")));
        }
        Ok(IdempotencyKey(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This key of `account_id` as the first `bytes` bytes of a SHA-256, in hex: the same
    /// key of the same account names the same thing (a purchase, a card setup), and a key of
    /// up to 255 characters fits Stripe's own 255-character keys.
    pub fn digest(&self, account_id: &str, bytes: usize) -> String {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("{account_id}\u{0}{}", self.0).as_bytes());
        d.iter().take(bytes).map(|b| format!("{b:02x}")).collect()
    }
}

/// A key for a test, checked like any other.
#[cfg(test)]
pub(crate) fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse("idempotency_key", k).unwrap_or_else(|e| panic!("{e}"))
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// A purchase's id (`pur_…`): derived from the account and the client's key, or random.
    PurchaseId
);

string_id!(
    /// An auto-recharge's id (`rch_…`), chosen when it is claimed.
    RechargeId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_where_they_enter() {
        assert!(IdempotencyKey::parse("idempotency_key", "order-1_x").is_ok());
        for bad in ["", "a b", "é", &"k".repeat(256)] {
            assert_eq!(IdempotencyKey::parse("idempotency_key", bad).unwrap_err().code(), "invalid_request", "{bad}");
        }
        assert_eq!(RechargeId::new("rch_1"), "rch_1");
    }
}
