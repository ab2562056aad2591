//! Verifying the audit log's chains (rules §19): every record's hash is of its content and the
//! hash before it, `seq` runs 1, 2, … without a gap, and the chain ends at its head. The first
//! record that does not verify is named; `topup-audit-verify` runs this over the table.

use super::{AuditHead, AuditLog, AuditRecord, GENESIS, NO_ACCOUNT_CHAIN};
use crate::store::{Accounts, Listings, Segment, StoreError};

/// Where a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Broken {
    pub chain: String,
    /// The first record that does not verify; `None` when what is wrong is the chain's end.
    pub record_id: Option<String>,
    pub seq: u64,
    pub why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.record_id {
            Some(id) => write!(f, "chain `{}`: record {id} (seq {}) does not verify: {}", self.chain, self.seq, self.why),
            None => write!(f, "chain `{}`: at seq {}: {}", self.chain, self.seq, self.why),
        }
    }
}

/// A chain checked record by record, in `seq` order (fed page by page).
pub struct ChainCheck {
    chain: String,
    last: Option<AuditHead>,
    pub records: u64,
}

impl ChainCheck {
    pub fn new(chain: &str) -> ChainCheck {
        ChainCheck { chain: chain.to_string(), last: None, records: 0 }
    }

    fn broken(&self, r: &AuditRecord, why: impl Into<String>) -> Broken {
        Broken { chain: self.chain.clone(), record_id: Some(r.id.clone()), seq: r.seq, why: why.into() }
    }

    /// The next record of the chain.
    pub fn feed(&mut self, r: &AuditRecord) -> Result<(), Broken> {
        let expected = self.last.as_ref().map_or(1, |h| h.seq + 1);
        let prev = self.last.as_ref().map_or(GENESIS, |h| h.hash.as_str());
        if r.chain() != self.chain {
            return Err(self.broken(r, format!("it names chain `{}`", r.chain())));
        }
        if r.seq != expected {
            return Err(self.broken(
                r,
                if r.seq > expected {
                    format!("the record(s) from seq {expected} to {} before it are missing", r.seq - 1)
                } else {
                    format!("it repeats seq {}", r.seq)
                },
            ));
        }
        if r.prev_hash != prev {
            return Err(self.broken(r, "its prev_hash is not the hash of the record before it"));
        }
        if r.computed_hash() != r.hash {
            return Err(self.broken(r, "its hash is not the hash of its content (it was edited)"));
        }
        self.last = Some(r.head());
        self.records += 1;
        Ok(())
    }

    /// The chain's end, against the head its writers advanced (`None`: no record was ever
    /// written).
    pub fn finish(&self, head: Option<&AuditHead>) -> Result<(), Broken> {
        let at = self.last.as_ref().map_or(0, |h| h.seq);
        let end = |why: String| Broken { chain: self.chain.clone(), record_id: None, seq: at, why };
        match (head, &self.last) {
            (None, None) => Ok(()),
            (Some(h), Some(l)) if h == l => Ok(()),
            (Some(h), _) if h.seq > at => {
                Err(end(format!("the chain ends at seq {at} but its head is at seq {}: records were removed", h.seq)))
            }
            (Some(h), _) => Err(end(format!("the head (seq {}) is not the chain's last record", h.seq))),
            (None, Some(_)) => Err(end("the chain has records but no head".into())),
        }
    }
}

/// Checks one complete chain, given in `seq` order, against its head.
pub fn verify_chain(chain: &str, records: &[AuditRecord], head: Option<&AuditHead>) -> Result<u64, Broken> {
    let mut check = ChainCheck::new(chain);
    for r in records {
        check.feed(r)?;
    }
    check.finish(head)?;
    Ok(check.records)
}

/// What verifying the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub chains: u64,
    pub records: u64,
    /// The first record (or end) that does not verify, per broken chain.
    pub broken: Vec<Broken>,
}

/// Records read from a chain at a time.
const PAGE: usize = 500;

/// Reads chain `chain` page by page and checks it against `head`.
pub async fn check_chain<L: AuditLog>(log: &L, chain: &str, head: Option<&AuditHead>) -> Result<Result<u64, Broken>, StoreError> {
    let mut check = ChainCheck::new(chain);
    let mut after = 0;
    loop {
        let page = log.audit_chain(chain, after, PAGE).await?;
        for r in &page {
            if let Err(b) = check.feed(r) {
                return Ok(Err(b));
            }
        }
        match page.last() {
            Some(r) if page.len() == PAGE => after = r.seq,
            _ => break,
        }
    }
    Ok(check.finish(head).map(|()| check.records))
}

/// Verifies the chain of no account and the chain of each account: `accounts`, or every
/// account when empty (listed as reconciliation lists them).
pub async fn verify_log<S: Accounts + Listings + AuditLog>(store: &S, accounts: &[String]) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let tally = |report: &mut Report, result: Result<u64, Broken>| {
        report.chains += 1;
        match result {
            Ok(n) => report.records += n,
            Err(b) => report.broken.push(b),
        }
    };
    let head = store.audit_head(NO_ACCOUNT_CHAIN).await?;
    let result = check_chain(store, NO_ACCOUNT_CHAIN, head.as_ref()).await?;
    tally(&mut report, result);
    let mut ids: Vec<String> = accounts.to_vec();
    let mut cursor = None;
    let listing = ids.is_empty();
    loop {
        if listing {
            let (page, next) = store.account_ids(500, cursor.take(), Segment::WHOLE).await?;
            ids = page;
            cursor = next;
        }
        for id in &ids {
            // An item that is part of an account (`parts`): its changes are its account's.
            if crate::parts::owner_of(id) != id {
                continue;
            }
            let head = match store.load_account(id).await? {
                Some(a) => a.audit,
                None => None,
            };
            let result = check_chain(store, id, head.as_ref()).await?;
            tally(&mut report, result);
        }
        if !listing || cursor.is_none() {
            break;
        }
    }
    Ok(report)
}
