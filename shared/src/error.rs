//! The one public error type. Every variant has a stable snake_case code and a sentence for a
//! person, and says whether retrying can help; `http` maps it to a status and a body. Nothing
//! here ever carries debug text into a response.

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
    /// 403 with a reason of its own: the caller may use the route, but not this far (support's
    /// adjustment limit, rules §19).
    #[error("{1}")]
    Denied(&'static str, String),
    #[error("This route does not accept {0}.")]
    MethodNotAllowed(String),
    /// The same idempotency key was used with a different request.
    #[error("This idempotency key was already used with a different request.")]
    IdempotencyConflict,
    #[error("This hold has expired and its reservation was released.")]
    HoldExpired,
    #[error("No open hold with this id exists.")]
    HoldNotFound,
    /// Out of allowance and credits. `code` comes from the profile's consumable.
    #[error("{message}")]
    OutOfCredits { code: String, message: String, balance: i64, consumable: String },
    /// The debit would take its entity's month past its limit (rules §17); the account itself
    /// could pay. `remaining` is what the limit still allows this month.
    #[error("This would take `{entity}` past its monthly budget.")]
    EntityBudgetExceeded { entity: String, remaining: i64 },
    /// A well-formed value that breaks a rule of the profile or the domain.
    #[error("{1}")]
    Rule(&'static str, String),
    /// A rule the request breaks whatever credits the account holds (an unknown consumable, a
    /// quantity or lifetime out of range, too many open holds): answered as `Rule` is, 422
    /// with its code, but decided the same on the whole account as on any one item of it
    /// (`parts`), so a refusal of this kind is final wherever it was decided. Any other refusal
    /// is decided again on the whole.
    #[error("{1}")]
    RequestRule(&'static str, String),
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
    /// A per-account limit on how often something may be started (purchases per minute);
    /// `retry_after` is the seconds until the limit allows it again.
    #[error("Too many requests of this kind for this account. Please retry in {retry_after} seconds.")]
    TooManyRequests { retry_after: u64 },
    /// A check that could not decide (a failed or unreadable read): it never answers allowed.
    #[error("We could not decide this check right now. Please retry.")]
    Undecided,
    /// An event that needs another one handled first (a refund before its payment's credit);
    /// the sender delivers it again later (Stripe retries for days).
    #[error("{1}")]
    OutOfOrder(&'static str, String),
    /// This item cannot take the request, which is not its to refuse: an item that is part of
    /// an account (`parts`) sends it to the whole account, which decides it. Never answered;
    /// should one escape, it reads as `Busy` (503 `account_busy`, retry after a second).
    #[error("The account is busy. Please retry.")]
    Elsewhere,
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
            ApiError::NotFound(code, _) | ApiError::Denied(code, _) => code,
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::HoldExpired => "hold_expired",
            ApiError::HoldNotFound => "hold_not_found",
            ApiError::OutOfCredits { code, .. } => code,
            ApiError::EntityBudgetExceeded { .. } => "entity_budget_exceeded",
            ApiError::Rule(code, _) | ApiError::RequestRule(code, _) => code,
            ApiError::Upstream => "upstream_unavailable",
            ApiError::PaymentsUnavailable => "payment_provider_unavailable",
            ApiError::Busy => "account_busy",
            ApiError::Undecided => "check_unavailable",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::OutOfOrder(code, _) => code,
            ApiError::Elsewhere => "account_busy",
        }
    }

    /// Whether trying again later can succeed: an upstream failure, contention, or an event
    /// that needs another one first. Event handlers fail (and are retried) only on these;
    /// any other error is final and retrying cannot fix it.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ApiError::Upstream
                | ApiError::PaymentsUnavailable
                | ApiError::Busy
                | ApiError::Undecided
                | ApiError::OutOfOrder(..)
                | ApiError::TooManyRequests { .. }
                | ApiError::Elsewhere
        )
    }

    /// Seconds a client should wait before trying again (`Retry-After`), when we know.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Busy | ApiError::Undecided | ApiError::Elsewhere => Some(1),
            ApiError::TooManyRequests { retry_after } => Some((*retry_after).max(1)),
            _ => None,
        }
    }

    /// A rule the request itself breaks (see `RequestRule`).
    pub fn request_rule(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::RequestRule(code, message.into())
    }

    pub fn account_not_found() -> Self {
        ApiError::NotFound("account_not_found", "No account with this id exists.".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_of_a_moment_are_retryable() {
        assert!(
            ApiError::Upstream.retryable() && ApiError::Busy.retryable() && ApiError::PaymentsUnavailable.retryable()
        );
        assert!(!ApiError::IdempotencyConflict.retryable() && !ApiError::invalid("x").retryable());
        assert!(!ApiError::rule("invalid_amount", "No.").retryable() && !ApiError::account_not_found().retryable());
    }
}
