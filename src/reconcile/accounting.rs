//! Every input record ends as exactly one of matched, corrected or needs
//! review. The cases list the records that came in; the rules' outcomes say
//! how each ended; a record without an outcome makes the counts not add up,
//! and `check_accounting` fails loudly.

use super::case::{FeeCase, RecordRef};
use super::output::{Accounting, SideAccounting};
use super::rules::Outcome;

/// What is known of one record: whether it came in (is in a case), and the
/// most severe outcome given to it.
#[derive(Debug, Clone, Copy, Default)]
struct RecordState {
    came_in: bool,
    ended: Option<Outcome>,
}

/// One `RecordState` per snapshot position, for each of the four lists.
#[derive(Debug, Default)]
struct RecordStates {
    lists: [Vec<RecordState>; 4],
}

impl RecordStates {
    fn slot(&mut self, record: RecordRef) -> &mut RecordState {
        let (list, index) = match record {
            RecordRef::GenesisFee(i) => (0, i),
            RecordRef::GenesisTxn(i) => (1, i),
            RecordRef::VendorFee(i) => (2, i),
            RecordRef::VendorTxn(i) => (3, i),
        };
        let states = &mut self.lists[list];
        if states.len() <= index {
            states.resize(index + 1, RecordState::default());
        }
        &mut states[index]
    }
}

/// Counts the records that came in and how each ended (the most severe
/// outcome any discrepancy gave it).
pub(crate) fn account(cases: &[FeeCase<'_>], outcomes: &[(RecordRef, Outcome)]) -> Accounting {
    let mut states = RecordStates::default();
    for record in cases.iter().flat_map(FeeCase::records) {
        states.slot(record).came_in = true;
    }
    for (record, outcome) in outcomes {
        let slot = states.slot(*record);
        slot.ended = Some(slot.ended.map_or(*outcome, |ended| ended.max(*outcome)));
    }
    let mut accounting = Accounting::default();
    for (list, records) in states.lists.iter().enumerate() {
        let side = if list < 2 {
            &mut accounting.genesis
        } else {
            &mut accounting.community_pass
        };
        for state in records.iter().filter(|state| state.came_in) {
            side.records_in += 1;
            if let Some(outcome) = state.ended {
                count(side, outcome);
            }
        }
    }
    accounting
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
