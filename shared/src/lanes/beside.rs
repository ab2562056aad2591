//! Which writes may commit on an account while its lanes hold credits (rules §14), read off the
//! write's cause by an exhaustive match (`cause.rs` classifies the rest of a cause's policies).

use crate::cause::Cause;

impl Cause {
    /// Whether the write may commit on the account while its lanes hold credits, without a
    /// recall first: it moves none of the credits the lanes hold and touches nothing a
    /// threshold, a hold or the allowance depends on. (Usage is decided apart: it may, unless
    /// it refused or reaches the floor.) Exhaustive: a new cause does not compile until it is
    /// classified here.
    pub fn beside_lanes(self) -> bool {
        match self {
            Cause::PurchaseState
            | Cause::RechargeClaim
            | Cause::Customer
            | Cause::CardSaved
            | Cause::AuditRecord
            | Cause::Widen => true,
            Cause::Usage
            | Cause::Settle
            | Cause::Hold
            | Cause::Refund
            | Cause::Dispute
            | Cause::DisputeClosed
            | Cause::Adjustment
            | Cause::Expiry
            | Cause::Void
            | Cause::Payment
            | Cause::RechargeFailed
            | Cause::RechargePaused
            | Cause::CardRemoved
            | Cause::AccountUpdate
            | Cause::AutoRechargeSettings
            | Cause::Alerts
            | Cause::Entity
            | Cause::Spread => false,
        }
    }
}
