//! Every input record ends as exactly one of matched, corrected or needs
//! review. The cases list the records that came in; the rules' outcomes say
//! how each ended; a record without an outcome makes the counts not add up,
//! and `check_accounting` fails loudly.

use std::collections::{BTreeMap, BTreeSet};

use super::case::{FeeCase, RecordRef};
use super::output::{Accounting, SideAccounting};
use super::rules::Outcome;

/// Counts the records that came in and how each ended (the most severe
/// outcome any discrepancy gave it).
pub(crate) fn account(cases: &[FeeCase<'_>], outcomes: &[(RecordRef, Outcome)]) -> Accounting {
    let records_in: BTreeSet<RecordRef> = cases.iter().flat_map(FeeCase::records).collect();
    let mut ended: BTreeMap<RecordRef, Outcome> = BTreeMap::new();
    for (record, outcome) in outcomes {
        let slot = ended.entry(*record).or_insert(*outcome);
        *slot = (*slot).max(*outcome);
    }
    let mut accounting = Accounting::default();
    for record in &records_in {
        side_of(&mut accounting, *record).records_in += 1;
        if let Some(outcome) = ended.get(record) {
            count(side_of(&mut accounting, *record), *outcome);
        }
    }
    accounting
}

fn side_of(accounting: &mut Accounting, record: RecordRef) -> &mut SideAccounting {
    if record.is_genesis() {
        &mut accounting.genesis
    } else {
        &mut accounting.community_pass
    }
}

fn count(side: &mut SideAccounting, outcome: Outcome) {
    match outcome {
        Outcome::Matched => side.matched += 1,
        Outcome::Corrected => side.corrected += 1,
        Outcome::NeedsReview => side.needs_review += 1,
    }
}

/// A side whose records do not all have an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{side}: {records_in} records in, but {matched} matched + {corrected} corrected + {needs_review} for review")]
pub struct AccountingError {
    pub side: &'static str,
    pub records_in: u64,
    pub matched: u64,
    pub corrected: u64,
    pub needs_review: u64,
}

impl SideAccounting {
    pub fn adds_up(&self) -> bool {
        self.records_in == self.matched + self.corrected + self.needs_review
    }
}

/// `records_in == matched + corrected + needs_review` on each side.
pub fn check_accounting(accounting: &Accounting) -> Result<(), AccountingError> {
    let sides = [
        ("genesis", &accounting.genesis),
        ("community_pass", &accounting.community_pass),
    ];
    for (side, counts) in sides {
        if !counts.adds_up() {
            return Err(AccountingError {
                side,
                records_in: counts.records_in,
                matched: counts.matched,
                corrected: counts.corrected,
                needs_review: counts.needs_review,
            });
        }
    }
    Ok(())
}
