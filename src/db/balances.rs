//! Patron balances (`cp_balances`) pulled by Get Balances, for the parent
//! portal's display and lock-out decision.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::cp_balances;
use super::{DbConnection, DbError};
use crate::domain::PatronBalance;
use crate::money::Money;
use crate::portal_view::StoredBalance;

/// Replaces the stored balance of each patron given; returns how many.
pub fn store(
    conn: &mut DbConnection,
    balances: &[PatronBalance],
    run_id: i64,
) -> Result<usize, DbError> {
    conn.transaction(|conn| {
        for chunk in balances.chunks(super::genesis::INSERT_BATCH_ROWS) {
            let ids: Vec<&str> = chunk.iter().map(|b| b.patron_id.as_str()).collect();
            diesel::delete(cp_balances::table.filter(cp_balances::patron_id.eq_any(ids)))
                .execute(conn)?;
            let rows: Vec<_> = chunk
                .iter()
                .map(|b| {
                    (
                        cp_balances::patron_id.eq(&b.patron_id),
                        cp_balances::balance_cents.eq(b.balance.cents()),
                        cp_balances::integration_balance_cents.eq(b.integration_balance.cents()),
                        cp_balances::other_balance_cents.eq(b.other_balance.cents()),
                        cp_balances::as_of.eq(b.as_of),
                        cp_balances::run_id.eq(Some(run_id)),
                    )
                })
                .collect();
            crate::with_backend!(conn, |c| diesel::insert_into(cp_balances::table)
                .values(&rows)
                .execute(c))?;
        }
        Ok(balances.len())
    })
}

/// The stored balances of these patrons.
pub fn for_patrons(
    conn: &mut DbConnection,
    patron_ids: &[String],
) -> Result<Vec<StoredBalance>, DbError> {
    let rows: Vec<(String, i64, i64, i64, NaiveDateTime)> = cp_balances::table
        .filter(cp_balances::patron_id.eq_any(patron_ids))
        .order(cp_balances::patron_id)
        .select((
            cp_balances::patron_id,
            cp_balances::balance_cents,
            cp_balances::integration_balance_cents,
            cp_balances::other_balance_cents,
            cp_balances::as_of,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(patron_id, b, i, o, as_of)| StoredBalance {
            patron_id,
            balance: Money::from_cents(b),
            integration_balance: Money::from_cents(i),
            other_balance: Money::from_cents(o),
            as_of,
        })
        .collect())
}
