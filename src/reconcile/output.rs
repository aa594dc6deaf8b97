//! What the reconciliation core returns: discrepancies (kind, both values, a
//! planned action or a reason for review), the plan those actions make, the
//! per-record accounting and each side's money totals.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{FeeId, StudentId, VendorTxn, VendorTxnId};
use crate::money::Money;

/// Declares the discrepancy kinds with their snake_case names in one place.
macro_rules! discrepancy_kinds {
    ($($variant:ident => $text:literal),+ $(,)?) => {
        /// Every kind of disagreement the core recognises; see the rules table
        /// in the `reconcile` module documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum DiscrepancyKind { $($variant),+ }

        impl DiscrepancyKind {
            pub const ALL: &'static [DiscrepancyKind] = &[$(DiscrepancyKind::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(DiscrepancyKind::$variant => $text),+ }
            }
        }
    };
}

discrepancy_kinds! {
    FeeMissingInCp => "fee_missing_in_cp",
    PaidFeeMissingInCp => "paid_fee_missing_in_cp",
    FeeOutOfDate => "fee_out_of_date",
    FeeDetailsOutOfDate => "fee_details_out_of_date",
    FeeDeletedInGenesis => "fee_deleted_in_genesis",
    PaidFeeMovedToAnotherStudent => "paid_fee_moved_to_another_student",
    FeeVoidedInGenesis => "fee_voided_in_genesis",
    FeeWaivedInGenesis => "fee_waived_in_genesis",
    GenesisCreditNotReflected => "genesis_credit_not_reflected",
    GenesisWaiverNotReflected => "genesis_waiver_not_reflected",
    CpPaymentMissingInGenesis => "cp_payment_missing_in_genesis",
    CpPartialPaymentMissingInGenesis => "cp_partial_payment_missing_in_genesis",
    CpRefundMissingInGenesis => "cp_refund_missing_in_genesis",
    CpWaiverMissingInGenesis => "cp_waiver_missing_in_genesis",
    CpReversalMissingInGenesis => "cp_reversal_missing_in_genesis",
    AmountNotLocked => "amount_not_locked",
    GenesisTxnUnknownToCp => "genesis_txn_unknown_to_cp",
    GenesisTxnWithoutFee => "genesis_txn_without_fee",
    TxnAmountMismatch => "txn_amount_mismatch",
    TxnFeeMismatch => "txn_fee_mismatch",
    AmountEditedAfterPayment => "amount_edited_after_payment",
    FeeVoidedAfterPayment => "fee_voided_after_payment",
    FeeDeletedAfterPayment => "fee_deleted_after_payment",
    OverpaymentCredit => "overpayment_credit",
    DuplicateTxnGenesis => "duplicate_txn_genesis",
    DuplicateTxnCp => "duplicate_txn_cp",
    DuplicateFee => "duplicate_fee",
    CpFeeWithoutGenesisFee => "cp_fee_without_genesis_fee",
    SentButIneligible => "sent_but_ineligible",
    UnprocessedVendorTxn => "unprocessed_vendor_txn",
    ConservationViolation => "conservation_violation",
}

impl fmt::Display for DiscrepancyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One correction the rules allow. The shell carries it out idempotently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Insert the vendor transaction into Genesis, source `community_pass`,
    /// keyed by its vendor id (a payment, refund, waiver or reversal).
    PostVendorTxn { fee_id: FeeId, txn: VendorTxn },
    /// Mark the fee's amount read-only: Community Pass applied a payment.
    LockAmount { fee_id: FeeId },
    /// Upsert the fee in Community Pass (amount, status, Genesis credit),
    /// keyed by the Genesis fee id. The shell builds the `FeePush`.
    PushFee { fee_id: FeeId },
}

impl Action {
    pub fn fee_id(&self) -> FeeId {
        match self {
            Action::PostVendorTxn { fee_id, .. }
            | Action::LockAmount { fee_id }
            | Action::PushFee { fee_id } => *fee_id,
        }
    }
}

/// What happens about one discrepancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "resolution", rename_all = "snake_case")]
pub enum Resolution {
    Planned(Action),
    NeedsReview {
        reason: String,
        suggested_action: String,
    },
}

impl Resolution {
    pub fn review(reason: impl Into<String>, suggested_action: impl Into<String>) -> Resolution {
        Resolution::NeedsReview {
            reason: reason.into(),
            suggested_action: suggested_action.into(),
        }
    }

    pub fn is_review(&self) -> bool {
        matches!(self, Resolution::NeedsReview { .. })
    }
}

/// One disagreement between the two sides (or inside one side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    pub kind: DiscrepancyKind,
    pub fee_id: Option<FeeId>,
    pub student_id: Option<StudentId>,
    pub vendor_txn_id: Option<VendorTxnId>,
    pub genesis_value: Option<String>,
    pub cp_value: Option<String>,
    pub resolution: Resolution,
    /// The dollars at stake: the transaction's amount for a transaction
    /// item, the credit for an overpayment, else the difference between
    /// the two sides' balances (or the one side's balance).
    #[serde(default)]
    pub at_stake: Money,
}

impl Discrepancy {
    /// The deterministic report order: fee, then kind, then transaction.
    pub fn sort_key(&self) -> (Option<FeeId>, DiscrepancyKind, Option<&VendorTxnId>) {
        (self.fee_id, self.kind, self.vendor_txn_id.as_ref())
    }
}

/// Money totals of one side over the in-scope managed fees.
///
/// `paid`, `refunded`, `waived` and `reversed` count Community Pass
/// transactions (on the Genesis side: those posted from Community Pass);
/// `genesis_credit` is the net of what Genesis recorded itself. `outstanding`
/// sums positive balances, `credit` the overpayments (negative balances, as a
/// positive amount), over open fees; the positive balances of void and
/// waived fees (which owe nothing) are `written_off`. Identity: `billed −
/// genesis_credit − paid − waived + refunded + reversed == outstanding +
/// written_off − credit`. A status disagreement (void on one side, open on
/// the other) therefore shows as a difference in `outstanding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideTotals {
    pub billed: Money,
    pub genesis_credit: Money,
    pub paid: Money,
    pub refunded: Money,
    pub waived: Money,
    pub reversed: Money,
    pub outstanding: Money,
    pub credit: Money,
    #[serde(default)]
    pub written_off: Money,
}

/// Both sides' totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub genesis: SideTotals,
    pub community_pass: SideTotals,
}

impl Totals {
    /// These totals with some fees' figures `before` replaced by `after`.
    pub fn with_fees_replaced(&self, before: &Totals, after: &Totals) -> Totals {
        Totals {
            genesis: self.genesis.moved(&before.genesis, &after.genesis),
            community_pass: self
                .community_pass
                .moved(&before.community_pass, &after.community_pass),
        }
    }
}

impl SideTotals {
    /// Each figure less `before`'s, plus `after`'s.
    fn moved(&self, before: &SideTotals, after: &SideTotals) -> SideTotals {
        let field = |get: fn(&SideTotals) -> Money| get(self) - get(before) + get(after);
        SideTotals {
            billed: field(|t| t.billed),
            genesis_credit: field(|t| t.genesis_credit),
            paid: field(|t| t.paid),
            refunded: field(|t| t.refunded),
            waived: field(|t| t.waived),
            reversed: field(|t| t.reversed),
            outstanding: field(|t| t.outstanding),
            credit: field(|t| t.credit),
            written_off: field(|t| t.written_off),
        }
    }
}

/// How one side's input records ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideAccounting {
    pub records_in: u64,
    pub matched: u64,
    pub corrected: u64,
    pub needs_review: u64,
}

/// How every input record ended, per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    pub genesis: SideAccounting,
    pub community_pass: SideAccounting,
}

/// The core's whole answer for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub discrepancies: Vec<Discrepancy>,
    pub accounting: Accounting,
    pub totals: Totals,
}

impl Reconciliation {
    /// The planned actions in the order the shell applies them: Genesis
    /// posts (by fee, then vendor sequence), then locks, then pushes.
    pub fn plan(&self) -> Vec<Action> {
        let mut actions: Vec<Action> = self
            .discrepancies
            .iter()
            .filter_map(|discrepancy| match &discrepancy.resolution {
                Resolution::Planned(action) => Some(action.clone()),
                Resolution::NeedsReview { .. } => None,
            })
            .collect();
        actions.sort_by(|left, right| apply_order(left).cmp(&apply_order(right)));
        actions.dedup();
        actions
    }

    /// The discrepancies a person has to look at.
    pub fn reviews(&self) -> impl Iterator<Item = &Discrepancy> {
        self.discrepancies
            .iter()
            .filter(|discrepancy| discrepancy.resolution.is_review())
    }

    /// Shows each review item on a fee this run corrected with the values
    /// found on re-reading it afterwards (`after`, the reconciliation of
    /// the re-read fees): what a person will find when they look, not what
    /// the run found before its own corrections. An item the re-read no
    /// longer finds keeps its values; returns how many were refreshed.
    pub fn show_review_values_after(&mut self, after: &Reconciliation) -> usize {
        let mut refreshed = 0;
        for item in self
            .discrepancies
            .iter_mut()
            .filter(|d| d.resolution.is_review())
        {
            let again = after
                .discrepancies
                .iter()
                .find(|d| d.resolution.is_review() && d.sort_key() == item.sort_key());
            if let Some(again) = again {
                let values = (&again.genesis_value, &again.cp_value, again.at_stake);
                if values != (&item.genesis_value, &item.cp_value, item.at_stake) {
                    item.genesis_value = again.genesis_value.clone();
                    item.cp_value = again.cp_value.clone();
                    item.at_stake = again.at_stake;
                    refreshed += 1;
                }
            }
        }
        refreshed
    }
}

fn apply_order(action: &Action) -> (u8, FeeId, i64, Option<&VendorTxnId>) {
    match action {
        Action::PostVendorTxn { fee_id, txn } => (0, *fee_id, txn.sequence, Some(&txn.id)),
        Action::LockAmount { fee_id } => (1, *fee_id, 0, None),
        Action::PushFee { fee_id } => (2, *fee_id, 0, None),
    }
}
