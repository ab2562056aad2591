//! Why an account changed. Every write names its cause, and the policies that depend on it —
//! whether drawing on a low balance may start a recharge (rules §10.5, §12), whether the write
//! may run while the account's lanes hold credits (rules §14) — are read off the cause by an
//! exhaustive match: a new cause does not compile until it is classified. The name is what
//! events say in their `cause` field.

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
    Lanes,
    /// The account spreads itself over more lanes (rules §21): moves no credits.
    Spread,
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

    /// Whether the write may commit on the account while its lanes hold credits, without a
    /// recall first: it moves none of the credits the lanes hold. (Usage is decided apart: it
    /// may, unless it refused or reaches the floor.)
    pub fn beside_lanes(self) -> bool {
        self.traits().2
    }

    fn traits(self) -> (&'static str, Effect, bool) {
        use Effect::*;
        match self {
            Cause::Usage => ("usage", Usage, false),
            Cause::Settle => ("settle", Usage, false),
            Cause::Hold => ("hold", Other, false),
            Cause::Refund => ("refund", TakesBack, false),
            Cause::Dispute => ("dispute", TakesBack, false),
            Cause::DisputeClosed => ("dispute_closed", Other, false),
            Cause::Adjustment => ("adjustment", TakesBack, false),
            Cause::Expiry => ("expiry", TakesBack, false),
            Cause::Void => ("void", TakesBack, false),
            Cause::Payment => ("payment", Other, false),
            Cause::PurchaseState => ("purchase_state", Other, true),
            Cause::RechargeClaim => ("recharge_claim", Other, true),
            Cause::RechargeFailed => ("recharge_failed", Other, false),
            Cause::RechargePaused => ("recharge_paused", Other, false),
            Cause::Customer => ("customer", Other, true),
            Cause::CardSaved => ("card_saved", Other, true),
            Cause::CardRemoved => ("card_removed", Other, false),
            Cause::AccountUpdate => ("account_update", Other, false),
            Cause::AutoRechargeSettings => ("auto_recharge_settings", Other, false),
            Cause::Alerts => ("alerts", Other, false),
            Cause::Entity => ("entity", Other, false),
            Cause::Lanes => ("lanes", Other, false),
            Cause::Spread => ("spread", Other, true),
            Cause::AuditRecord => ("audit_record", Other, true),
        }
    }
}
