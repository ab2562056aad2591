//! A run of reconciliation over every account (rules §13): parallel segments of the account
//! listing, a checkpoint per page, unreadable accounts reported, and a run resumed by later
//! invocations until it finishes.

use serde::{Deserialize, Serialize};

use super::{AccountReport, Difference};
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::payments::PaymentHistory;
use crate::store::{Segment, Store};

/// An account reconciliation could not read (its item, its ledger, or Stripe's payments for
/// it): reported, and the run goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    pub account_id: String,
    pub code: String,
}

/// What reconciling every account found. `differences` and `unreadable` list at most
/// `LIST_MAX` a segment; the `_not_listed` counts say how many more there were. `complete` is
/// false while a segment has accounts left (its checkpoint says where it stopped).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub accounts: usize,
    pub credited_payments: usize,
    pub stripe_payments: usize,
    pub differences: Vec<Difference>,
    #[serde(default)]
    pub differences_not_listed: usize,
    #[serde(default)]
    pub unreadable: Vec<Unreadable>,
    #[serde(default)]
    pub unreadable_not_listed: usize,
    #[serde(default = "yes")]
    pub complete: bool,
    /// Whether this invocation reconciled anything (false when every segment of the run was
    /// finished by an earlier one).
    #[serde(default)]
    pub worked: bool,
}

fn yes() -> bool {
    true
}

/// Differences or unreadable accounts one segment lists by name.
const LIST_MAX: usize = 200;

impl Report {
    /// Nothing reconciled yet.
    pub fn empty() -> Report {
        Report { complete: true, ..Report::default() }
    }

    /// Counts one account's report in.
    pub fn add(&mut self, r: AccountReport) {
        self.accounts += 1;
        self.credited_payments += r.credited_payments;
        self.stripe_payments += r.stripe_payments;
        for d in r.differences {
            if self.differences.len() < LIST_MAX {
                self.differences.push(d);
            } else {
                self.differences_not_listed += 1;
            }
        }
    }

    /// Accounts that could not be read, listed or not.
    pub fn unreadable_count(&self) -> usize {
        self.unreadable.len() + self.unreadable_not_listed
    }

    fn unreadable(&mut self, account_id: &str, e: &ApiError) {
        tracing::error!(account_id, code = e.code(), "reconciliation could not read the account");
        if self.unreadable.len() < LIST_MAX {
            self.unreadable.push(Unreadable { account_id: account_id.to_string(), code: e.code().to_string() });
        } else {
            self.unreadable_not_listed += 1;
        }
    }

    fn merge(&mut self, other: Report) {
        self.accounts += other.accounts;
        self.credited_payments += other.credited_payments;
        self.stripe_payments += other.stripe_payments;
        self.differences.extend(other.differences);
        self.differences_not_listed += other.differences_not_listed;
        self.unreadable.extend(other.unreadable);
        self.unreadable_not_listed += other.unreadable_not_listed;
        self.complete &= other.complete;
        self.worked |= other.worked;
    }
}

/// One segment's progress, saved after every page: where to go on, and what it found so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SegmentProgress {
    cursor: Option<String>,
    done: bool,
    found: Report,
}

/// Accounts read per page of the account listing.
const PAGE: usize = 100;
/// Accounts of one segment reconciled at once.
const PER_SEGMENT: usize = 4;
/// Attempts at reading one page of the listing before the segment stops for this invocation.
const PAGE_ATTEMPTS: u32 = 3;

impl<S: Store + crate::receipts::ReceiptStore, B: EventBus> Credits<S, B> {
    /// Reconciles every account now, in 4 parallel segments, as a run of its own.
    pub async fn reconcile_all<H: PaymentHistory>(&self, history: &H) -> Result<Report, ApiError> {
        self.reconcile_run(history, &crate::ledger::new_id("run"), 4, None).await
    }

    /// One run of reconciliation over every account (rules §13): the listing in `segments`
    /// parallel parts (DynamoDB's parallel scan), each going page by page with a checkpoint
    /// `RECONCILE#{run}#{i}of{segments}` after every page. An account that cannot be read is
    /// reported as unreadable and the run goes on. At `deadline` each segment stops after its
    /// page; a later invocation with the same `run` goes on from the checkpoints, and one after
    /// the run finished answers from them without reading anything.
    pub async fn reconcile_run<H: PaymentHistory>(
        &self,
        history: &H,
        run: &str,
        segments: u32,
        deadline: Option<std::time::Instant>,
    ) -> Result<Report, ApiError> {
        use futures_util::stream::{self, StreamExt};
        let total = segments.max(1);
        let parts: Vec<Result<Report, ApiError>> = stream::iter(0..total)
            .map(|index| self.reconcile_segment(history, run, Segment { index, total }, deadline))
            .buffer_unordered(total as usize)
            .collect()
            .await;
        let mut report = Report::empty();
        for part in parts {
            report.merge(part?);
        }
        Ok(report)
    }

    async fn reconcile_segment<H: PaymentHistory>(
        &self,
        history: &H,
        run: &str,
        segment: Segment,
        deadline: Option<std::time::Instant>,
    ) -> Result<Report, ApiError> {
        use futures_util::stream::{self, StreamExt};
        let name = format!("RECONCILE#{run}#{}of{}", segment.index, segment.total);
        let mut progress: SegmentProgress = match self.store.load_checkpoint(&name).await.map_err(upstream)? {
            Some(v) => serde_json::from_value(v).map_err(|_| ApiError::Upstream)?,
            None => SegmentProgress { found: Report::empty(), ..SegmentProgress::default() },
        };
        progress.found.worked = false;
        while !progress.done {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                break;
            }
            let mut page = None;
            for attempt in 0..PAGE_ATTEMPTS {
                match self.store.account_ids(PAGE, progress.cursor.clone(), segment).await {
                    Ok(p) => {
                        page = Some(p);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(segment = segment.index, attempt, error = %e, "account listing failed");
                        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
            // The listing itself is unreadable: this segment stops here, unfinished, and the
            // next invocation goes on from its checkpoint.
            let Some((ids, next)) = page else { break };
            let results: Vec<(String, Result<AccountReport, ApiError>)> = stream::iter(ids)
                .map(|id| async move {
                    let r = self.reconcile_account(history, &id).await;
                    (id, r)
                })
                .buffer_unordered(PER_SEGMENT)
                .collect()
                .await;
            for (id, r) in results {
                match r {
                    Ok(account) => progress.found.add(account),
                    Err(e) => progress.found.unreadable(&id, &e),
                }
            }
            progress.found.worked = true;
            progress.done = next.is_none();
            progress.cursor = next;
            let saved = serde_json::to_value(&progress).map_err(|_| ApiError::Upstream)?;
            self.store.save_checkpoint(&name, &saved).await.map_err(upstream)?;
        }
        progress.found.complete = progress.done;
        Ok(progress.found)
    }
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// What run `run` (of `segments` parts) found so far, from its checkpoints, reading nothing
    /// else (the console, rules §19); `None` when no part of it has a checkpoint.
    pub async fn saved_run(&self, run: &str, segments: u32) -> Result<Option<Report>, ApiError> {
        let total = segments.max(1);
        let mut report = Report::empty();
        let mut any = false;
        for index in 0..total {
            let name = format!("RECONCILE#{run}#{index}of{total}");
            match self.store.load_checkpoint(&name).await.map_err(upstream)? {
                Some(v) => {
                    let mut p: SegmentProgress = serde_json::from_value(v).map_err(|_| ApiError::Upstream)?;
                    p.found.complete = p.done;
                    report.merge(p.found);
                    any = true;
                }
                None => report.complete = false,
            }
        }
        Ok(any.then_some(report))
    }
}
