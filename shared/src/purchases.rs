//! A purchase of credits and its life (rules §5, §7): `pending` when recorded, `processing`
//! while a bank debit settles, then `succeeded` (credited once), `failed` or `expired`.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::clock;
use crate::crediting::Payment;
use crate::engine::{upstream, Applied, Change, Credits, MAX_ATTEMPTS};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::events::{DomainEvent, Event, PurchaseMoved};
use crate::ids::{IdempotencyKey, PurchaseId};
use crate::ledger::{request_hash, EntryKind};
use crate::money::{Cents, Micros};
use crate::payments::{CheckoutRequest, CheckoutUi, Purchases};
use crate::pricing::{self, PurchaseChoice};
use crate::profile::Tax;
use crate::store::{CommitError, PurchaseWrite, Store};

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
    pub purchase_id: PurchaseId,
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
    /// How it was taxed when it started (rules §20): its payment is checked by this, whatever
    /// the deployment's setting is by the time it is paid. Records from before it: none.
    #[serde(default)]
    pub tax: Tax,
    /// What the paid session took, tax included (`amount_total`), once credited (rules §20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_total: Option<i64>,
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

    /// The purchase as the API shows it (rules §11).
    pub fn view(&self) -> PurchaseView {
        PurchaseView {
            purchase_id: self.purchase_id.clone(),
            status: self.status,
            message: self.message().map(str::to_string),
            charge: Charge { amount: self.charge.get(), currency: self.currency.clone() },
            credits: self.credits.get(),
            checkout_session_id: self.checkout_session_id.clone(),
            transaction_id: self.transaction_id.clone(),
            created_at: clock::rfc3339(self.created_at),
        }
    }
}

/// Money charged: minor units of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub amount: i64,
    pub currency: String,
}

/// A purchase as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseView {
    pub purchase_id: PurchaseId,
    pub status: PurchaseStatus,
    pub message: Option<String>,
    pub charge: Charge,
    pub credits: i64,
    pub checkout_session_id: Option<String>,
    pub transaction_id: Option<String>,
    pub created_at: String,
}

/// `GET .../purchases/{id}`: the purchase, and the balance once it has succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurchaseStatusView {
    #[serde(flatten)]
    pub purchase: PurchaseView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
}

/// Which Checkout Session event arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutEventKind {
    /// `checkout.session.completed`: paid now, or (`unpaid`) settling later.
    Completed,
    /// `checkout.session.async_payment_succeeded`.
    AsyncSucceeded,
    /// `checkout.session.async_payment_failed`.
    AsyncFailed,
    /// `checkout.session.expired`.
    Expired,
}

/// What a Checkout Session event says about its payment, as far as it decides anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutEvent {
    pub kind: CheckoutEventKind,
    pub session_id: String,
    pub payment_intent_id: Option<String>,
    pub payment_status: Option<String>,
    /// What was paid, tax included.
    pub amount_total: Option<i64>,
    /// The price before tax (`amount_subtotal`; with no tax, the total).
    pub amount_subtotal: Option<i64>,
    pub currency: Option<String>,
}

/// What a Checkout Session event did: moved the purchase (or found it already past that
/// point), or nothing, because the event is not proof of this purchase's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutOutcome {
    Purchase(PurchaseRecord),
    /// `session_mismatch`, `amount_mismatch`, `currency_mismatch`, `not_paid`.
    Ignored(&'static str),
}

/// What `start_purchase` answers: the purchase with its Checkout Session to pay it in, or,
/// for a retry of a purchase already past `pending`, the purchase as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PurchaseStarted {
    Checkout {
        #[serde(flatten)]
        purchase: PurchaseView,
        client_secret: Option<String>,
        url: Option<String>,
    },
    Existing(PurchaseView),
}

/// New purchases an account may start in one minute (`count_purchase_start`).
pub const PURCHASES_PER_MINUTE: u32 = 20;
const MINUTE_MS: i64 = 60_000;

/// A purchase id: derived from the account and the client's `Idempotency-Key`, so a retry
/// names the same purchase; random without a key.
pub fn purchase_id(account_id: &str, idempotency_key: Option<&IdempotencyKey>) -> PurchaseId {
    match idempotency_key {
        Some(key) => PurchaseId::new(format!("pur_{}", key.digest(account_id, 12))),
        None => PurchaseId::new(crate::ledger::new_id("pur")),
    }
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `POST .../credits/purchases`: records the pending purchase (priced here, never by the
    /// client), then opens its Checkout Session. If Stripe cannot be reached the purchase stays
    /// `pending` with no session, so nothing can ever pay for it and nothing can credit; the
    /// client's retry with the same `Idempotency-Key` picks it up and opens the session.
    pub async fn start_purchase<P: Purchases>(
        &self,
        payments: &P,
        id: &str,
        choice: &PurchaseChoice,
        key: Option<&IdempotencyKey>,
        ui: &CheckoutUi,
    ) -> Result<PurchaseStarted, ApiError> {
        let record = self.record_purchase(id, choice, key).await?;
        if record.status != PurchaseStatus::Pending {
            // A retry after the purchase completed: its outcome, no new session.
            return Ok(PurchaseStarted::Existing(record.view()));
        }
        let customer = self.ensure_customer(payments, id).await?;
        let request = CheckoutRequest {
            customer_id: customer,
            amount_cents: record.charge.get(),
            currency: record.currency.clone(),
            description: record.description.clone(),
            reference: record.purchase_id.to_string(),
            ui: ui.clone(),
            idempotency_key: self.stripe_key("checkout", record.purchase_id.as_str()),
            tax: record.tax,
            metadata: self.stripe_metadata(id, &[("topup_purchase_id", record.purchase_id.as_str())]),
        };
        let session = payments.create_checkout(&request).await?;
        let record = self.attach_checkout(id, &record.purchase_id, &session.id).await?;
        Ok(PurchaseStarted::Checkout {
            purchase: record.view(),
            client_secret: session.client_secret,
            url: session.url,
        })
    }

    /// Records a pending purchase priced by the server. With an `Idempotency-Key`, the same key
    /// and request name the same purchase (returned again); another request under the key is
    /// 409.
    pub async fn record_purchase(
        &self,
        id: &str,
        choice: &PurchaseChoice,
        key: Option<&IdempotencyKey>,
    ) -> Result<PurchaseRecord, ApiError> {
        let account = self.load(id).await?;
        let quote = pricing::quote(&self.profile, &account.plan, choice)?;
        let hash = request_hash(&json!({"amount": choice.amount, "package": choice.package, "blocks": choice.blocks}));
        let now = self.now();
        let purchase_id = purchase_id(id, key);
        // A retry under its key names a purchase already started: it is answered, not counted.
        if key.is_some() {
            if let Some(existing) = self.store.load_purchase(id, purchase_id.as_str()).await.map_err(upstream)? {
                return if existing.request_hash == hash { Ok(existing) } else { Err(ApiError::IdempotencyConflict) };
            }
        }
        // A purchase becomes a grant once paid, and a payment is never refused: an account
        // with no room for another grant may not start one (rules §16).
        account.room_for_grant()?;
        self.count_purchase_start(id, now).await?;
        let record = PurchaseRecord {
            purchase_id,
            account_id: id.to_string(),
            status: PurchaseStatus::Pending,
            charge: quote.charge,
            currency: self.profile.currency.clone(),
            credits: quote.credits,
            description: quote.description,
            request_hash: hash.clone(),
            created_at: now,
            updated_at: now,
            checkout_session_id: None,
            payment_intent_id: None,
            transaction_id: None,
            tax: self.profile.tax,
            paid_total: None,
        };
        match self
            .store
            .put_purchase(PurchaseWrite { record: record.clone(), from: vec![], expected_updated_at: None })
            .await
        {
            Ok(()) => Ok(record),
            Err(CommitError::PurchaseNotInState(Some(existing))) if existing.request_hash == hash => Ok(*existing),
            Err(CommitError::PurchaseNotInState(_)) => Err(ApiError::IdempotencyConflict),
            Err(CommitError::Store(e)) => Err(upstream(e)),
            Err(_) => Err(ApiError::Busy),
        }
    }

    /// Counts a new purchase in its account's minute (rules §13): each one opens a Checkout
    /// Session, and every tenant shares one Stripe rate limit, so an account may start at most
    /// `PURCHASES_PER_MINUTE` a minute; past that, 429 `too_many_requests` with the seconds
    /// until the next minute.
    async fn count_purchase_start(&self, id: &str, now: i64) -> Result<(), ApiError> {
        let window = now - now.rem_euclid(MINUTE_MS);
        if self.store.count_start(id, "purchases", window, PURCHASES_PER_MINUTE).await.map_err(upstream)? {
            return Ok(());
        }
        let retry_after = u64::try_from((window + MINUTE_MS - now + 999) / 1000).unwrap_or(1);
        tracing::info!(account_id = id, retry_after, "purchase start refused: too many this minute");
        Err(ApiError::TooManyRequests { retry_after })
    }

    /// The purchase as its status route shows it: with the balance once it has succeeded.
    pub async fn purchase_status(&self, id: &str, purchase_id: &PurchaseId) -> Result<PurchaseStatusView, ApiError> {
        let record = self.purchase(id, purchase_id).await?;
        let balance = match record.status {
            PurchaseStatus::Succeeded => Some(self.account(id).await?.balance.get()),
            _ => None,
        };
        Ok(PurchaseStatusView { purchase: record.view(), balance })
    }

    pub async fn purchase(&self, id: &str, purchase_id: &PurchaseId) -> Result<PurchaseRecord, ApiError> {
        self.store
            .load_purchase(id, purchase_id.as_str())
            .await
            .map_err(upstream)?
            .ok_or_else(|| ApiError::NotFound("purchase_not_found", "No purchase with this id exists.".into()))
    }

    /// Moves a purchase from one of `from` to `to` (no credits move). A purchase already past
    /// that point is left as it is and returned: webhook deliveries arrive in any order.
    async fn move_purchase(
        &self,
        id: &str,
        purchase_id: &PurchaseId,
        from: &[PurchaseStatus],
        edit: impl Fn(&mut PurchaseRecord),
    ) -> Result<PurchaseRecord, ApiError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.purchase(id, purchase_id).await?;
            if !from.contains(&current.status) {
                return Ok(current);
            }
            let mut next = current.clone();
            edit(&mut next);
            next.updated_at = self.now().max(current.updated_at + 1);
            let write = PurchaseWrite {
                record: next.clone(),
                from: vec![current.status],
                expected_updated_at: Some(current.updated_at),
            };
            match self.store.put_purchase(write).await {
                Ok(()) => return Ok(next),
                Err(CommitError::Store(e)) => return Err(upstream(e)),
                Err(_) => continue, // moved meanwhile: look again
            }
        }
        Err(ApiError::Busy)
    }

    /// The Checkout Session made for a pending purchase.
    pub async fn attach_checkout(
        &self,
        id: &str,
        purchase_id: &PurchaseId,
        session_id: &str,
    ) -> Result<PurchaseRecord, ApiError> {
        let session = session_id.to_string();
        self.move_purchase(id, purchase_id, &[PurchaseStatus::Pending], |p| {
            p.checkout_session_id = Some(session.clone())
        })
        .await
    }

    /// Checkout completed but the payment settles later (bank debits): `processing`, with a
    /// `PurchaseProcessing` event.
    pub async fn purchase_processing(&self, id: &str, purchase_id: &PurchaseId) -> Result<PurchaseRecord, ApiError> {
        self.move_purchase_announced(id, purchase_id, &[PurchaseStatus::Pending], PurchaseStatus::Processing).await
    }

    /// The payment failed: `failed`, never credited, with a `PurchaseFailed` event (seed 000:
    /// the customer is told).
    pub async fn purchase_failed(&self, id: &str, purchase_id: &PurchaseId) -> Result<PurchaseRecord, ApiError> {
        self.move_purchase_announced(
            id,
            purchase_id,
            &[PurchaseStatus::Pending, PurchaseStatus::Processing],
            PurchaseStatus::Failed,
        )
        .await
    }

    /// Moves a purchase from one of `from` to `to` and announces it on the bus: the purchase
    /// write and the event's outbox entry commit with the account in one transaction, so the
    /// event goes out exactly when the move happened. A purchase already past `from` (a late
    /// or repeated delivery) is returned as it is, and nothing is announced.
    async fn move_purchase_announced(
        &self,
        id: &str,
        purchase_id: &PurchaseId,
        from: &[PurchaseStatus],
        to: PurchaseStatus,
    ) -> Result<PurchaseRecord, ApiError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.purchase(id, purchase_id).await?;
            if !from.contains(&current.status) {
                return Ok(current);
            }
            let applied = self
                .apply(id, None, |a, now| {
                    let next = a.next(now);
                    let record =
                        PurchaseRecord { status: to, updated_at: now.max(current.updated_at + 1), ..current.clone() };
                    let moved = PurchaseMoved {
                        purchase_id: record.purchase_id.clone(),
                        status: record.status,
                        message: record.message().map(str::to_string),
                        credits: record.credits.get(),
                        charge: Charge { amount: record.charge.get(), currency: record.currency.clone() },
                        balance: next.balance.get(),
                    };
                    let event = match to {
                        PurchaseStatus::Processing => Event::PurchaseProcessing(moved),
                        _ => Event::PurchaseFailed(moved),
                    };
                    let event = DomainEvent::new(id, now, event);
                    let from = vec![current.status];
                    let purchase = PurchaseWrite { record, from, expected_updated_at: Some(current.updated_at) };
                    Change::quiet(next, crate::cause::Cause::PurchaseState, ())
                        .with_event(event)
                        .with_purchase(purchase)
                        .write()
                })
                .await?;
            match applied {
                Applied::Done(()) => return self.purchase(id, purchase_id).await,
                Applied::PurchaseNotInState | Applied::HoldNotOpen(_) => continue,
                Applied::KeysClaimed(_) | Applied::EntityMoved => return Err(ApiError::Upstream),
            }
        }
        Err(ApiError::Busy)
    }

    /// The Checkout Session expired unpaid.
    pub async fn purchase_expired(&self, id: &str, purchase_id: &PurchaseId) -> Result<PurchaseRecord, ApiError> {
        self.move_purchase(id, purchase_id, &[PurchaseStatus::Pending], |p| p.status = PurchaseStatus::Expired).await
    }

    /// A Checkout Session event for purchase `purchase_id` (rules §7, §12). A signature proves
    /// only that Stripe sent it, so it moves the purchase only when it is about this purchase's
    /// own session, and credits only when the session was paid the purchase's charge in its
    /// currency. Anything else changes nothing; the real payment still credits afterwards.
    pub async fn checkout_event(
        &self,
        id: &str,
        purchase_id: &PurchaseId,
        event: &CheckoutEvent,
    ) -> Result<CheckoutOutcome, ApiError> {
        let record = self.purchase(id, purchase_id).await?;
        if record.checkout_session_id.as_deref() != Some(event.session_id.as_str()) {
            return Ok(CheckoutOutcome::Ignored("session_mismatch"));
        }
        let paid = match (event.kind, event.payment_status.as_deref()) {
            (CheckoutEventKind::Completed, Some("paid")) | (CheckoutEventKind::AsyncSucceeded, _) => true,
            // A priced purchase is never "paid" by a session that needed no payment.
            (CheckoutEventKind::Completed, Some("no_payment_required")) => {
                return Ok(CheckoutOutcome::Ignored("not_paid"))
            }
            _ => false,
        };
        let moved = if paid {
            if !self.paid_in_full(&record, event) {
                return Ok(CheckoutOutcome::Ignored("amount_mismatch"));
            }
            if !event.currency.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(&record.currency)) {
                return Ok(CheckoutOutcome::Ignored("currency_mismatch"));
            }
            let payment = event.payment_intent_id.as_deref().unwrap_or(event.session_id.as_str());
            self.purchase_paid_with_total(id, purchase_id, payment, event.amount_total).await?
        } else {
            match event.kind {
                CheckoutEventKind::Completed => self.purchase_processing(id, purchase_id).await?,
                CheckoutEventKind::AsyncFailed => self.purchase_failed(id, purchase_id).await?,
                CheckoutEventKind::Expired => self.purchase_expired(id, purchase_id).await?,
                CheckoutEventKind::AsyncSucceeded => return Ok(CheckoutOutcome::Ignored("not_paid")),
            }
        };
        Ok(CheckoutOutcome::Purchase(moved))
    }

    /// Whether a paid session paid this purchase's price (rules §7, §20): its subtotal is the
    /// price (credits are granted for the price before tax), and its total is that price with
    /// the tax Stripe added, which only a purchase started taxed has (without tax the total is
    /// the price). The purchase's own tax mode decides, not the deployment's current one.
    fn paid_in_full(&self, record: &PurchaseRecord, event: &CheckoutEvent) -> bool {
        let price = record.charge.get();
        let subtotal = event.amount_subtotal.or(event.amount_total);
        match event.amount_total {
            Some(total) if subtotal == Some(price) => total == price || (record.tax.automatic() && total > price),
            _ => false,
        }
    }

    /// The purchase's payment succeeded: credit it exactly once and mark it `succeeded`, in one
    /// transaction keyed by the PaymentIntent.
    pub async fn purchase_paid(
        &self,
        id: &str,
        purchase_id: &PurchaseId,
        payment_intent_id: &str,
    ) -> Result<PurchaseRecord, ApiError> {
        self.purchase_paid_with_total(id, purchase_id, payment_intent_id, None).await
    }

    /// `purchase_paid`, keeping what the customer paid (the session's `amount_total`, tax
    /// included) on the record and the payment's claim, so a dispute's pre-tax share never
    /// depends on the invoice (rules §20).
    pub async fn purchase_paid_with_total(
        &self,
        id: &str,
        purchase_id: &PurchaseId,
        payment_intent_id: &str,
        paid_total: Option<i64>,
    ) -> Result<PurchaseRecord, ApiError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.purchase(id, purchase_id).await?;
            if current.status == PurchaseStatus::Succeeded {
                return Ok(current);
            }
            let payment = Payment {
                payment_id: payment_intent_id.to_string(),
                kind: EntryKind::Purchase,
                credits: current.credits,
                charge_cents: current.charge.get(),
                reference: purchase_id.to_string(),
                description: current.description.clone(),
                recharge_month: None,
            };
            let current = PurchaseRecord { paid_total: paid_total.or(current.paid_total), ..current };
            match self.credit(id, &payment, Some(&current)).await? {
                // Credited now, or this payment was credited before (same transaction, so the
                // purchase says succeeded).
                Applied::Done(..) => return self.purchase(id, purchase_id).await,
                // The purchase changed since it was read (another delivery moved it): nothing
                // was written; read it again and credit unless it has succeeded meanwhile.
                Applied::PurchaseNotInState | Applied::HoldNotOpen(_) => continue,
                Applied::KeysClaimed(_) | Applied::EntityMoved => return Err(ApiError::Upstream),
            }
        }
        Err(ApiError::Busy)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::PaymentRecords;
    use super::*;
    use crate::ids::key;

    #[tokio::test]
    async fn an_account_starts_a_bounded_number_of_purchases_a_minute() {
        let c = crate::adapters::memory::memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        c.upsert_account("b", "free", vec![]).await.unwrap();
        let choice = PurchaseChoice { amount: Some(2_000), ..Default::default() };
        for _ in 0..PURCHASES_PER_MINUTE {
            c.record_purchase("a", &choice, None).await.unwrap();
        }
        // The next one in this minute is refused with when to come back; nothing is recorded.
        // (The twenty above take microseconds; a minute turning among them is not a concern.)
        let e = c.record_purchase("a", &choice, Some(&key("late"))).await.unwrap_err();
        assert_eq!(e.code(), "too_many_requests");
        assert!(matches!(e.retry_after(), Some(1..=60)), "{:?}", e.retry_after());
        assert!(c.store.load_purchase("a", purchase_id("a", Some(&key("late"))).as_str()).await.unwrap().is_none());
        // Other accounts have their own count, and a retry of a started purchase is answered.
        c.record_purchase("b", &choice, None).await.unwrap();
    }

    #[tokio::test]
    async fn a_retried_purchase_is_answered_without_counting() {
        let c = crate::adapters::memory::memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        let choice = PurchaseChoice { amount: Some(2_000), ..Default::default() };
        let first = c.record_purchase("a", &choice, Some(&key("k"))).await.unwrap();
        for _ in 0..PURCHASES_PER_MINUTE * 2 {
            let again = c.record_purchase("a", &choice, Some(&key("k"))).await.unwrap();
            assert_eq!(again.purchase_id, first.purchase_id);
        }
        let other = PurchaseChoice { amount: Some(3_000), ..Default::default() };
        assert_eq!(c.record_purchase("a", &other, Some(&key("k"))).await.unwrap_err().code(), "idempotency_conflict");
    }

    #[test]
    fn ids_are_stable_per_key_and_account() {
        assert_eq!(purchase_id("a", Some(&key("k"))), purchase_id("a", Some(&key("k"))));
        assert_ne!(purchase_id("a", Some(&key("k"))), purchase_id("b", Some(&key("k"))));
        assert_ne!(purchase_id("a", None), purchase_id("a", None));
        assert!(purchase_id("a", Some(&key("k"))).as_str().starts_with("pur_"));
    }
}
