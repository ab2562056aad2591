//! The one public error type. Every variant has a stable snake_case code, an HTTP status and a
//! sentence for a person. Nothing here ever carries debug text into a response.

use serde_json::{json, Value};

/// An error a request can end in. `code()` is a stable contract with clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a wrong type, a missing or unknown field. The message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("Send the request body as application/json.")]
    UnsupportedMediaType,
    #[error("Authentication is required.")]
    Unauthenticated,
    #[error("You don't have permission to do this.")]
    Forbidden,
    #[error("{1}")]
    NotFound(&'static str, String),
    #[error("This route does not accept {0}.")]
    MethodNotAllowed(String),
    /// The same idempotency key was used with a different request.
    #[error("This idempotency key was already used with a different request.")]
    IdempotencyConflict,
    #[error("This hold has expired and its reservation was released.")]
    HoldExpired,
    /// Out of allowance and credits. `code` comes from the profile's consumable.
    #[error("{message}")]
    OutOfCredits { code: String, message: String, balance: i64, consumable: String },
    /// A well-formed value that breaks a rule of the profile or the domain.
    #[error("{1}")]
    Rule(&'static str, String),
    /// An upstream (AWS, Stripe) failure the client may retry.
    #[error("A service we depend on is unavailable. Please retry.")]
    Upstream,
    /// Stripe could not be reached or failed on its side; nothing was recorded that could
    /// charge or credit, and the same request may be retried.
    #[error("Our payment provider is unavailable. Please retry.")]
    PaymentsUnavailable,
    /// Contention that did not settle within our retry budget; safe to retry.
    #[error("The account is busy. Please retry.")]
    Busy,
    /// An event that needs another one handled first (a refund before its payment's credit);
    /// the sender delivers it again later (Stripe retries for days).
    #[error("{1}")]
    OutOfOrder(&'static str, String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest(message.into())
    }

    pub fn rule(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Rule(code, message.into())
    }

    pub fn code(&self) -> &str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(code, _) => code,
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::HoldExpired => "hold_expired",
            ApiError::OutOfCredits { code, .. } => code,
            ApiError::Rule(code, _) => code,
            ApiError::Upstream => "upstream_unavailable",
            ApiError::PaymentsUnavailable => "payment_provider_unavailable",
            ApiError::Busy => "account_busy",
            ApiError::OutOfOrder(code, _) => code,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::InvalidRequest(_) => 400,
            ApiError::UnsupportedMediaType => 415,
            ApiError::Unauthenticated => 401,
            ApiError::Forbidden => 403,
            ApiError::NotFound(..) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::IdempotencyConflict | ApiError::HoldExpired | ApiError::OutOfOrder(..) => 409,
            ApiError::OutOfCredits { .. } => 402,
            ApiError::Rule(..) => 422,
            ApiError::Upstream => 502,
            ApiError::Busy | ApiError::PaymentsUnavailable => 503,
        }
    }

    /// `{"error":{"code","message"}}`, plus the balance for a 402.
    pub fn body(&self) -> Value {
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let ApiError::OutOfCredits { balance, consumable, .. } = self {
            body["balance"] = json!(balance);
            body["error"]["consumable"] = json!(consumable);
        }
        body
    }

    pub fn account_not_found() -> Self {
        ApiError::NotFound("account_not_found", "No account with this id exists.".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_snake_case_code_and_no_debug_text() {
        let all = [
            ApiError::invalid("Field `quantity` must be an integer."),
            ApiError::UnsupportedMediaType,
            ApiError::Unauthenticated,
            ApiError::Forbidden,
            ApiError::account_not_found(),
            ApiError::MethodNotAllowed("DELETE".into()),
            ApiError::IdempotencyConflict,
            ApiError::HoldExpired,
            ApiError::OutOfCredits {
                code: "out_of_credits".into(),
                message: "Out.".into(),
                balance: 0,
                consumable: "llm_tokens".into(),
            },
            ApiError::rule("invalid_quantity", "Quantity must be positive."),
            ApiError::Upstream,
            ApiError::PaymentsUnavailable,
            ApiError::Busy,
            ApiError::OutOfOrder("payment_not_credited_yet", "Not yet.".into()),
        ];
        for e in all {
            let code = e.code();
            assert!(!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
            assert!((400..600).contains(&e.status()));
            let body = e.body();
            assert_eq!(body["error"]["code"], code);
            let msg = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!msg.contains("Error") && !msg.contains('{'), "{msg}");
            // A sentence for a person, never the code again.
            assert!(msg != code && msg.ends_with('.'), "{code}: {msg}");
        }
    }
}
