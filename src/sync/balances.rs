//! Get Balances: pulls every patron's whole-account balance (including fees
//! Genesis never created) and stores it with its as-of time.

use serde::Serialize;

use super::SyncError;
use crate::db::{balances, DbConnection};
use crate::money::Money;
use crate::portal::{all_balances_keeping_rejected, CommunityPass};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BalancesReport {
    pub patrons: u64,
    pub with_balance: u64,
    pub total: Money,
    /// Balance records Community Pass sent that break the contract (by
    /// patron and reason): not stored; the others are.
    pub rejected: Vec<String>,
}

pub fn get_balances(
    conn: &mut DbConnection,
    portal: &dyn CommunityPass,
    run_id: i64,
) -> Result<BalancesReport, SyncError> {
    let listing = all_balances_keeping_rejected(portal)?;
    let pulled = listing.items;
    for record in &listing.rejected {
        tracing::warn!(%record, "Community Pass sent a balance that breaks the contract; not stored");
    }
    balances::store(conn, &pulled, run_id)?;
    Ok(BalancesReport {
        patrons: pulled.len() as u64,
        with_balance: pulled.iter().filter(|b| b.balance.is_positive()).count() as u64,
        total: pulled.iter().map(|b| b.balance).sum(),
        rejected: listing.rejected.iter().map(|r| r.to_string()).collect(),
    })
}
