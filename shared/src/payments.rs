//! Charging a saved card through Stripe (rules §7, §8), behind a small trait so the domain never
//! sees Stripe's types. Every call that creates something carries an idempotency key derived
//! from our own record (a recharge claim, an account), so a retry — or a recovery after the
//! caller died — gets the first result back instead of a second charge.

use std::collections::HashMap;
use std::future::Future;

/// How an off-session charge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        payment_intent_id: String,
    },
    /// Settles later; `payment_intent.succeeded` or `.payment_failed` will tell.
    Processing {
        payment_intent_id: String,
    },
    /// A decline, `authentication_required`, or a PaymentIntent left needing the customer.
    Failed {
        payment_intent_id: Option<String>,
        code: String,
        decline_code: Option<String>,
        message: String,
    },
}

/// What asking Stripe to cancel a PaymentIntent came to (rules §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled (now or before): it can never succeed.
    Canceled,
    /// Past cancelling: it succeeded, and its money came.
    Succeeded,
    /// Past cancelling: it is processing, and its money may still come (or it may fail).
    Processing,
}

/// Stripe could not be reached or failed on its side: the same call may be retried (with the
/// same idempotency key).
#[derive(Debug, Clone, thiserror::Error)]
#[error("stripe unavailable: {0}")]
pub struct PaymentsUnavailable(pub String);

/// A request that could not reach Stripe answers 503 `payment_provider_unavailable`. Stripe's
/// error text stays in the log, never in a response.
impl From<PaymentsUnavailable> for crate::error::ApiError {
    fn from(e: PaymentsUnavailable) -> Self {
        tracing::error!(error = %e, "stripe call failed");
        crate::error::ApiError::PaymentsUnavailable
    }
}

/// A charge of a saved card with nobody present.
#[derive(Debug, Clone)]
pub struct OffSessionCharge {
    pub customer_id: String,
    pub payment_method_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub idempotency_key: String,
    pub metadata: Vec<(String, String)>,
}

/// How the customer sees Checkout: embedded in the billing page (`client_secret`) or on
/// Stripe's hosted page (`url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutUi {
    Embedded { return_url: String },
    Hosted { success_url: String, cancel_url: String },
}

/// A Checkout Session for one purchase.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    /// The line's name on the payment page and the receipt.
    pub description: String,
    /// `client_reference_id`: the purchase id.
    pub reference: String,
    pub ui: CheckoutUi,
    pub idempotency_key: String,
    /// On the session, its PaymentIntent (so refunds and disputes find the account) and the
    /// invoice Checkout creates (so its receipt finds the purchase; rules §20).
    pub metadata: Vec<(String, String)>,
    /// With `StripeAutomatic`, Checkout collects the billing address and Stripe Tax adds tax
    /// on top of the price (rules §20).
    pub tax: crate::profile::Tax,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub client_secret: Option<String>,
    pub url: Option<String>,
}

/// A SetupIntent that saves a card for later off-session charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSetup {
    pub id: String,
    pub client_secret: String,
}

/// A saved card as the credits view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub id: String,
    pub customer_id: Option<String>,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

/// The Stripe customer of an account, made once (its idempotency key is the account's).
#[derive(Debug, Clone)]
pub struct NewCustomer {
    pub email: Option<String>,
    pub idempotency_key: String,
    pub metadata: Vec<(String, String)>,
}

/// A SetupIntent (`usage=off_session`) for a customer: saves a card, charges nothing.
#[derive(Debug, Clone)]
pub struct CardSetupRequest {
    pub customer_id: String,
    pub idempotency_key: String,
    pub metadata: Vec<(String, String)>,
}

pub trait Payments: Send + Sync {
    /// Creates the Stripe customer of an account (idempotent per account); its id.
    fn create_customer(
        &self,
        customer: &NewCustomer,
    ) -> impl Future<Output = Result<String, PaymentsUnavailable>> + Send;
    fn charge_off_session(
        &self,
        charge: &OffSessionCharge,
    ) -> impl Future<Output = Result<ChargeOutcome, PaymentsUnavailable>> + Send;
    /// Cancels a PaymentIntent that did not go through, so that it can never succeed later
    /// (idempotent per key).
    fn cancel_payment(
        &self,
        payment_intent_id: &str,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<CancelOutcome, PaymentsUnavailable>> + Send;
}

/// A refund of (part of) a payment, asked for by finance or the service (rules §19).
#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub payment_intent_id: String,
    /// Minor units; `None` refunds what is left of the payment.
    pub amount_cents: Option<i64>,
    pub idempotency_key: String,
    pub metadata: Vec<(String, String)>,
}

/// What Stripe said to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Made (or, for a repeated idempotency key, made before): its id, amount and Stripe's
    /// status (`succeeded`, `pending`, …).
    Made { refund_id: String, amount_cents: i64, status: String },
    /// Stripe refused it (more than is left to refund, a payment that cannot be refunded):
    /// its message, for the person who asked.
    Refused { message: String },
}

/// What buying credits and saving a card need besides charging: Checkout Sessions,
/// SetupIntents and the cards they save.
pub trait Purchases: Payments {
    /// Creates (or, for a repeated idempotency key, returns again) a Checkout Session.
    fn create_checkout(
        &self,
        request: &CheckoutRequest,
    ) -> impl Future<Output = Result<CheckoutSession, PaymentsUnavailable>> + Send;
    /// A SetupIntent (`usage=off_session`) for the customer; no charge.
    fn create_card_setup(
        &self,
        request: &CardSetupRequest,
    ) -> impl Future<Output = Result<CardSetup, PaymentsUnavailable>> + Send;
    /// The card behind a payment method; `None` when it is not a card.
    fn card(&self, payment_method_id: &str) -> impl Future<Output = Result<Option<Card>, PaymentsUnavailable>> + Send;
    /// Detaches a saved payment method from its customer.
    fn detach(&self, payment_method_id: &str) -> impl Future<Output = Result<(), PaymentsUnavailable>> + Send;
    /// A PaymentIntent's metadata (who it was for).
    fn payment_metadata(
        &self,
        payment_intent_id: &str,
    ) -> impl Future<Output = Result<HashMap<String, String>, PaymentsUnavailable>> + Send;
    /// Refunds (part of) a payment (idempotent per key). Its credits are taken back when
    /// Stripe's `charge.refunded` arrives, as for a refund made in Stripe's dashboard.
    fn refund(&self, request: &RefundRequest) -> impl Future<Output = Result<RefundOutcome, PaymentsUnavailable>> + Send;
}

/// A PaymentIntent as Stripe records it, for reconciliation (who paid what, what was refunded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: String,
    /// Stripe's status: `succeeded`, `processing`, `requires_payment_method`, ...
    pub status: String,
    /// What was charged, in minor units.
    pub amount: i64,
    /// Stripe's running total of refunds on the payment's charge.
    pub amount_refunded: i64,
    /// Whether the payment's charge has been disputed (it stays so once it was).
    pub disputed: bool,
    pub currency: String,
    /// Unix seconds.
    pub created: i64,
    pub metadata: HashMap<String, String>,
}

/// Stripe's side of the books: every payment of a customer (rules §10.2 is checked against it).
pub trait PaymentHistory: Send + Sync {
    fn customer_payments(
        &self,
        customer_id: &str,
    ) -> impl Future<Output = Result<Vec<PaymentRecord>, PaymentsUnavailable>> + Send;
}
