//! Deliberately broken variants of the engine, compiled in only with the test-only `broken`
//! feature: each drops one guard an invariant rests on, so that the simulator
//! (`tests/tests/simulation.rs`) can show it finds the bug, and within how many seeds. Without
//! the feature `on` is a constant `false` and every variant compiles away.

/// One guard left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// The store no longer refuses a commit whose idempotency key is claimed already.
    DropIdempotencyCondition = 1,
    /// A payment's credit claims a key of its own each time, so a redelivered event credits
    /// it again.
    CreditPaymentTwice,
    /// A grant that expires is taken off the balance but stays, to expire again.
    ExpireGrantTwice,
    /// Auto-recharge forgets its monthly count cap.
    ForgetMonthlyCap,
    /// A refund forgets what the payment's disputes already took back.
    ForgetRefundCap,
    /// A recall of the credits out on an account's parts (`parts`) leaves the last part's
    /// out, and the account forgets them as though that part had spent them.
    SkipRecall,
    /// An entity's monthly limit is never checked: a debit or hold naming it passes whatever
    /// the month has spent.
    IgnoreEntityLimit,
    /// A settlement beyond its hold forgets its entity's limit and draws what the account can
    /// pay.
    SettlePastEntityLimit,
    /// Webhooks out: an attempt whose claim found the delivery taken (another runner has it,
    /// or a redelivered bus event finds it made) POSTs anyway.
    DeliverTwice,
}

#[cfg(feature = "broken")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns one variant on (or none), for the whole process.
#[cfg(feature = "broken")]
pub fn set(bug: Option<Bug>) {
    ACTIVE.store(bug.map_or(0, |b| b as u8), std::sync::atomic::Ordering::SeqCst);
}

/// Whether `bug` is on.
#[inline]
pub fn on(bug: Bug) -> bool {
    #[cfg(feature = "broken")]
    {
        ACTIVE.load(std::sync::atomic::Ordering::SeqCst) == bug as u8
    }
    #[cfg(not(feature = "broken"))]
    {
        let _ = bug;
        false
    }
}
