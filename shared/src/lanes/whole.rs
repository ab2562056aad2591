//! The account as a whole (rules §14), for the reads that show or total "the account": views,
//! its ledger pages and exports, revenue. An account with lanes is read with them at one
//! instant (`Credits::snapshot`: a lease or recall between the reads would count credits twice
//! or not at all), and its ledger is the merged ledger of its own item and its lanes'
//! (`ledger.rs`), as its people see it: without leases, which only move credits between its
//! items. An account without lanes is read as it always was, from its own item.

use crate::account::Account;
use crate::engine::Credits;
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::LedgerEntry;
use crate::store::Store;

use super::ledger::{decode_merged_cursor, encode_merged_cursor, first_bounds};
use super::whole;

/// One page of a ledger, newest first, and the cursor of the next when there is more.
pub type Page = (Vec<LedgerEntry>, Option<String>);

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The account as a whole, read at one instant, with its newest `n` entries as its people
    /// see them when its ledger runs over its lanes too; `None` entries when its own item holds
    /// its whole ledger (read them there: the account is then its own item, as read).
    pub async fn whole_with_recent(&self, id: &str, n: usize) -> Result<(Account, Option<Vec<LedgerEntry>>), ApiError> {
        let (a, lanes) = self.snapshot(id).await?;
        if a.lanes_ever() == 0 {
            return Ok((a, None));
        }
        // The merged page as of that instant, whose newest running balance is that whole balance.
        let (recent, _) = self.merged_page(&a, n, first_bounds(&a, &lanes)).await?;
        Ok((whole(&a, &lanes), Some(recent)))
    }

    /// One page (newest first) of the entries `keep` keeps of account `id`'s ledger as its
    /// people see it, below `cursor` (the first page without), when its ledger runs over its
    /// lanes too; `None` when its own item holds its whole ledger (page the store's). A first
    /// page is read with the lanes at one instant; a later one follows its cursor.
    pub async fn whole_page(
        &self,
        id: &str,
        limit: usize,
        cursor: Option<&str>,
        keep: &(dyn Fn(&LedgerEntry) -> bool + Sync),
    ) -> Result<Option<Page>, ApiError> {
        let (a, lanes) = match cursor {
            None => self.snapshot(id).await?,
            Some(_) => (self.load(id).await?, vec![]),
        };
        if a.lanes_ever() == 0 {
            return Ok(None);
        }
        let bounds = match cursor {
            Some(c) => decode_merged_cursor(c, a.lanes_ever() as usize + 1)?,
            None => first_bounds(&a, &lanes),
        };
        let (page, next) = self.merged_page_of(&a, limit, bounds, keep).await?;
        Ok(Some((page, next.map(|b| encode_merged_cursor(&b)))))
    }

    /// Every entry of account `a` as a whole (its lanes' too, leases included), oldest first,
    /// with the whole balance after each.
    pub async fn whole_entries(&self, a: &Account) -> Result<Vec<LedgerEntry>, ApiError> {
        if a.lanes_ever() > 0 {
            self.merged_ledger(a).await
        } else {
            self.whole_ledger(&a.id).await
        }
    }

    /// Every entry of account `a` as its people see it, oldest first: with lanes, without our
    /// leases (rules §16).
    pub async fn shown_entries(&self, a: &Account) -> Result<Vec<LedgerEntry>, ApiError> {
        if a.lanes_ever() > 0 {
            self.customer_ledger(a).await
        } else {
            self.whole_ledger(&a.id).await
        }
    }
}
