//! The review queue's rules (DESIGN.md §6, "Review items are a queue with
//! memory"): what becomes of each stored item when a nightly run has looked,
//! and what a person may do to one. Pure: no IO, no clock; the shell
//! (`sync::nightly`, `cli::review`) reads and writes `cp_review_items`
//! through `db::review_items`.
//!
//! An item's identity is its fee, kind and vendor transaction id
//! (`item_key`), so the same problem seen on many nights is one item with
//! one id and one first-seen. States:
//!
//! | state | meaning | becomes |
//! |---|---|---|
//! | `new` | first seen by the latest run that looked | `open` when seen again |
//! | `open` | seen before, still there | stays |
//! | `acknowledged` | a person saw it, it is still there | stays |
//! | `resolved_automatically` | a run that examined it no longer found it (the run is recorded) | `open` if it comes back |
//! | `resolved_by_person` | a person closed it (who, when, note) | stays closed, even if still found |
//!
//! A run resolves only items within its reach: a whole-district full run
//! reaches everything, an incremental run the fees it examined. Scoped and
//! dry runs never change the queue.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{FeeId, VendorTxnId};

/// Where an item is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    New,
    Open,
    Acknowledged,
    ResolvedAutomatically,
    ResolvedByPerson,
}

impl ItemState {
    pub const ALL: [ItemState; 5] = [
        ItemState::New,
        ItemState::Open,
        ItemState::Acknowledged,
        ItemState::ResolvedAutomatically,
        ItemState::ResolvedByPerson,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::New => "new",
            ItemState::Open => "open",
            ItemState::Acknowledged => "acknowledged",
            ItemState::ResolvedAutomatically => "resolved_automatically",
            ItemState::ResolvedByPerson => "resolved_by_person",
        }
    }

    /// Words for people.
    pub fn label(self) -> &'static str {
        match self {
            ItemState::New => "new",
            ItemState::Open => "still open",
            ItemState::Acknowledged => "acknowledged",
            ItemState::ResolvedAutomatically => "resolved automatically",
            ItemState::ResolvedByPerson => "resolved by a person",
        }
    }

    pub fn parse(text: &str) -> Option<ItemState> {
        ItemState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Still waiting for its cause to go away or a person to close it.
    pub fn is_unresolved(self) -> bool {
        matches!(
            self,
            ItemState::New | ItemState::Open | ItemState::Acknowledged
        )
    }
}

/// The stable identity of an item: `FEE|KIND|VENDOR_TXN` (`-` for none).
pub fn item_key(fee: Option<FeeId>, kind: &str, vendor_txn: Option<&VendorTxnId>) -> String {
    let fee = fee.map_or_else(|| "-".to_string(), |f| f.0.to_string());
    let txn = vendor_txn.map_or("-", |v| v.0.as_str());
    format!("{fee}|{kind}|{txn}")
}

/// A stored item, as much as the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    pub id: i64,
    pub key: String,
    pub fee_id: Option<FeeId>,
    pub state: ItemState,
}

/// What a run examined, so it resolves nothing it did not look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Every managed fee (a whole-district full run).
    Everything,
    /// Only these fees (an incremental run); items naming no fee are left.
    Fees(BTreeSet<FeeId>),
}

impl Reach {
    fn covers(&self, item: &QueueItem) -> bool {
        match self {
            Reach::Everything => true,
            Reach::Fees(fees) => item.fee_id.is_some_and(|fee| fees.contains(&fee)),
        }
    }
}

/// The changes one run makes to the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueUpdate {
    /// Keys (of the run's sightings) with no stored item yet: insert as `new`.
    pub inserts: Vec<String>,
    /// Stored items seen again, with their state from now on.
    pub seen: Vec<(i64, ItemState)>,
    /// Stored unresolved items the run examined and no longer found.
    pub resolved: Vec<i64>,
}

/// What one run does to the queue: `existing` is every stored item (any
/// state), `sighted` the keys this run found needing a person.
pub fn plan_update(existing: &[QueueItem], sighted: &[String], reach: &Reach) -> QueueUpdate {
    let by_key: BTreeMap<&str, &QueueItem> = existing
        .iter()
        .map(|item| (item.key.as_str(), item))
        .collect();
    let sighted_keys: BTreeSet<&str> = sighted.iter().map(String::as_str).collect();
    let mut update = QueueUpdate::default();
    for key in &sighted_keys {
        match by_key.get(key) {
            None => update.inserts.push(key.to_string()),
            Some(item) => update.seen.push((item.id, seen_again(item.state))),
        }
    }
    for item in existing {
        if item.state.is_unresolved()
            && !sighted_keys.contains(item.key.as_str())
            && reach.covers(item)
        {
            update.resolved.push(item.id);
        }
    }
    update
}

/// The state of a stored item its run found again.
pub fn seen_again(state: ItemState) -> ItemState {
    match state {
        ItemState::New | ItemState::Open | ItemState::ResolvedAutomatically => ItemState::Open,
        ItemState::Acknowledged => ItemState::Acknowledged,
        ItemState::ResolvedByPerson => ItemState::ResolvedByPerson,
    }
}

/// What a person asks of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonAction {
    Acknowledge,
    Resolve,
}

/// Why a person's action is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("review item {id} is already {}", .state.label())]
    AlreadyClosed { id: i64, state: ItemState },
    #[error("review item {id} is already acknowledged")]
    AlreadyAcknowledged { id: i64 },
    #[error("a note is required: say what was done or decided")]
    NoteRequired,
}

/// The state after a person's action, or why it is refused. Only an
/// unresolved item can be acknowledged (once) or resolved.
pub fn person_acts(
    id: i64,
    state: ItemState,
    action: PersonAction,
    note: &str,
) -> Result<ItemState, ReviewError> {
    if note.trim().is_empty() {
        return Err(ReviewError::NoteRequired);
    }
    if !state.is_unresolved() {
        return Err(ReviewError::AlreadyClosed { id, state });
    }
    match action {
        PersonAction::Acknowledge if state == ItemState::Acknowledged => {
            Err(ReviewError::AlreadyAcknowledged { id })
        }
        PersonAction::Acknowledge => Ok(ItemState::Acknowledged),
        PersonAction::Resolve => Ok(ItemState::ResolvedByPerson),
    }
}

/// Whole days between two instants (never negative): an item's age.
pub fn age_days(first_seen: chrono::NaiveDateTime, now: chrono::NaiveDateTime) -> i64 {
    (now - first_seen).num_days().max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, fee: i64, kind: &str, state: ItemState) -> QueueItem {
        QueueItem {
            id,
            key: item_key(Some(FeeId(fee)), kind, None),
            fee_id: Some(FeeId(fee)),
            state,
        }
    }

    fn key(fee: i64, kind: &str) -> String {
        item_key(Some(FeeId(fee)), kind, None)
    }

    #[test]
    fn identity_names_fee_kind_and_transaction() {
        let txn = VendorTxnId("CP-1".into());
        assert_eq!(
            item_key(Some(FeeId(7)), "txn_amount_mismatch", Some(&txn)),
            "7|txn_amount_mismatch|CP-1"
        );
        assert_eq!(
            item_key(None, "unprocessed_vendor_txn", None),
            "-|unprocessed_vendor_txn|-"
        );
    }

    #[test]
    fn first_sighting_inserts_and_second_keeps_the_item_open() {
        let update = plan_update(&[], &[key(1, "overpayment_credit")], &Reach::Everything);
        assert_eq!(update.inserts, vec![key(1, "overpayment_credit")]);
        let stored = [item(10, 1, "overpayment_credit", ItemState::New)];
        let update = plan_update(&stored, &[key(1, "overpayment_credit")], &Reach::Everything);
        assert!(update.inserts.is_empty());
        assert_eq!(update.seen, vec![(10, ItemState::Open)]);
        assert!(update.resolved.is_empty());
    }

    #[test]
    fn an_item_whose_cause_went_away_resolves_itself() {
        let stored = [
            item(10, 1, "overpayment_credit", ItemState::Open),
            item(11, 2, "txn_amount_mismatch", ItemState::Acknowledged),
        ];
        let update = plan_update(&stored, &[], &Reach::Everything);
        assert_eq!(update.resolved, vec![10, 11]);
    }

    #[test]
    fn a_run_resolves_nothing_beyond_its_reach() {
        let stored = [
            item(10, 1, "overpayment_credit", ItemState::Open),
            item(11, 2, "overpayment_credit", ItemState::Open),
            QueueItem {
                id: 12,
                key: item_key(None, "unprocessed_vendor_txn", None),
                fee_id: None,
                state: ItemState::New,
            },
        ];
        let reach = Reach::Fees([FeeId(2)].into_iter().collect());
        let update = plan_update(&stored, &[], &reach);
        assert_eq!(update.resolved, vec![11]);
    }

    #[test]
    fn resolved_by_a_person_stays_closed_and_automatic_resolution_reopens() {
        let stored = [
            item(10, 1, "overpayment_credit", ItemState::ResolvedByPerson),
            item(
                11,
                2,
                "overpayment_credit",
                ItemState::ResolvedAutomatically,
            ),
        ];
        let sighted = [key(1, "overpayment_credit"), key(2, "overpayment_credit")];
        let update = plan_update(&stored, &sighted, &Reach::Everything);
        assert_eq!(
            update.seen,
            vec![(10, ItemState::ResolvedByPerson), (11, ItemState::Open)]
        );
        assert!(update.resolved.is_empty());
        // Closed items are never resolved again.
        let update = plan_update(&stored, &[], &Reach::Everything);
        assert!(update.resolved.is_empty());
    }

    #[test]
    fn acknowledged_stays_acknowledged_while_seen() {
        assert_eq!(seen_again(ItemState::Acknowledged), ItemState::Acknowledged);
    }

    #[test]
    fn a_person_acknowledges_once_and_resolves_only_open_items() {
        use PersonAction::*;
        assert_eq!(
            person_acts(1, ItemState::New, Acknowledge, "calling the family"),
            Ok(ItemState::Acknowledged)
        );
        assert_eq!(
            person_acts(1, ItemState::Acknowledged, Acknowledge, "again"),
            Err(ReviewError::AlreadyAcknowledged { id: 1 })
        );
        assert_eq!(
            person_acts(1, ItemState::Acknowledged, Resolve, "refunded by cheque"),
            Ok(ItemState::ResolvedByPerson)
        );
        assert!(matches!(
            person_acts(1, ItemState::ResolvedAutomatically, Resolve, "x"),
            Err(ReviewError::AlreadyClosed { .. })
        ));
        assert_eq!(
            person_acts(1, ItemState::Open, Resolve, "  "),
            Err(ReviewError::NoteRequired)
        );
    }

    #[test]
    fn states_round_trip() {
        for state in ItemState::ALL {
            assert_eq!(ItemState::parse(state.as_str()), Some(state));
        }
    }
}
