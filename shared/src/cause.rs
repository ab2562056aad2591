//! Why an account changed. Every write names its cause, and the policies that depend on it —
//! whether drawing on a low balance may start a recharge (rules §10.5, §12) here, whether the
//! write may commit beside credits out on the account's parts in `parts` — are read off the
//! cause by an exhaustive match: a new cause does not compile until it is classified. The name
//! is what events say in their `cause` field.

/// What a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Usage,
    Settle,
    Hold,
    Refund,
    Dispute,
    DisputeClosed,
    Adjustment,
    Expiry,
    Void,
    Payment,
    PurchaseState,
    RechargeClaim,
    RechargeFailed,
    RechargePaused,
    Customer,
    CardSaved,
    CardRemoved,
    AccountUpdate,
    AutoRechargeSettings,
    Alerts,
    Entity,
    /// How the account is spread over items changed (a setting of `parts`).
    Spread,
    /// The account spread itself over more items, by its own policy: moves no credits.
    Widen,
    /// A write that only records a change made elsewhere in the account's audit chain (a
    /// refund at Stripe, a redelivery; rules §19): it moves no credits.
    AuditRecord,
}

/// How a change moves the balance, for the low-balance episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Usage: drawing on a low balance may start a recharge.
    Usage,
    /// Takes credits back (or moves them) without usage: going low through it starts none.
    TakesBack,
    /// Anything else: leaves the episode as it is.
    Other,
}

impl Cause {
    /// The name events carry (`BalanceLow.cause`, …).
    pub fn as_str(self) -> &'static str {
        self.traits().0
    }

    pub fn effect(self) -> Effect {
        self.traits().1
    }

    fn traits(self) -> (&'static str, Effect) {
        use Effect::*;
        match self {
            Cause::Usage => ("usage", Usage),
            Cause::Settle => ("settle", Usage),
            Cause::Hold => ("hold", Other),
            Cause::Refund => ("refund", TakesBack),
            Cause::Dispute => ("dispute", TakesBack),
            Cause::DisputeClosed => ("dispute_closed", Other),
            Cause::Adjustment => ("adjustment", TakesBack),
            Cause::Expiry => ("expiry", TakesBack),
            Cause::Void => ("void", TakesBack),
            Cause::Payment => ("payment", Other),
            Cause::PurchaseState => ("purchase_state", Other),
            Cause::RechargeClaim => ("recharge_claim", Other),
            Cause::RechargeFailed => ("recharge_failed", Other),
            Cause::RechargePaused => ("recharge_paused", Other),
            Cause::Customer => ("customer", Other),
            Cause::CardSaved => ("card_saved", Other),
            Cause::CardRemoved => ("card_removed", Other),
            Cause::AccountUpdate => ("account_update", Other),
            Cause::AutoRechargeSettings => ("auto_recharge_settings", Other),
            Cause::Alerts => ("alerts", Other),
            Cause::Entity => ("entity", Other),
            Cause::Spread => (crate::parts::SPREAD_CAUSE, Other),
            Cause::Widen => (crate::parts::WIDEN_CAUSE, Other),
            Cause::AuditRecord => ("audit_record", Other),
        }
    }
}
