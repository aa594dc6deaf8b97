//! Words a business administrator reads instead of codes: one label per
//! discrepancy kind (the match is exhaustive, so a new kind cannot ship
//! without one) and a sentence per correction.

use crate::reconcile::{Action, DiscrepancyKind};

use super::format::format_money;

/// The human label of a discrepancy kind.
pub fn kind_label(kind: DiscrepancyKind) -> &'static str {
    use DiscrepancyKind as K;
    match kind {
        K::FeeMissingInCp => "Fee not yet in Community Pass",
        K::PaidFeeMissingInCp => "Paid fee missing from Community Pass",
        K::FeeOutOfDate => "Fee changed in Genesis, not yet in Community Pass",
        K::FeeDetailsOutOfDate => {
            "Fee details (student, family, description, dates) not yet in Community Pass"
        }
        K::FeeDeletedInGenesis => "Unpaid fee deleted in Genesis",
        K::PaidFeeMovedToAnotherStudent => "Paid fee moved to another student",
        K::FeeVoidedInGenesis => "Fee voided in Genesis",
        K::FeeWaivedInGenesis => "Fee waived in Genesis",
        K::GenesisCreditNotReflected => "Office payment not reflected in Community Pass",
        K::GenesisWaiverNotReflected => "Office waiver not reflected in Community Pass",
        K::CpPaymentMissingInGenesis => "Online payment not posted in Genesis",
        K::CpPartialPaymentMissingInGenesis => "Online partial payment not posted in Genesis",
        K::CpRefundMissingInGenesis => "Online refund not posted in Genesis",
        K::CpWaiverMissingInGenesis => "Online waiver not posted in Genesis",
        K::CpReversalMissingInGenesis => "Returned payment not posted in Genesis",
        K::AmountNotLocked => "Paid fee's amount not yet locked",
        K::GenesisTxnUnknownToCp => "Genesis payment unknown to Community Pass",
        K::GenesisTxnWithoutFee => "Genesis payments on a deleted fee",
        K::TxnAmountMismatch => "Payment amounts differ",
        K::TxnFeeMismatch => "Payment posted to a different fee",
        K::AmountEditedAfterPayment => "Amount edited after a payment",
        K::FeeVoidedAfterPayment => "Fee voided after a payment",
        K::FeeDeletedAfterPayment => "Fee deleted after a payment",
        K::OverpaymentCredit => "Overpayment (credit on account)",
        K::DuplicateTxnGenesis => "Payment posted twice in Genesis",
        K::DuplicateTxnCp => "Conflicting copies of a payment in Community Pass",
        K::DuplicateFee => "Fee listed twice",
        K::CpFeeWithoutGenesisFee => "Community Pass fee with no Genesis fee",
        K::SentButIneligible => "Sent fee no longer eligible",
        K::UnprocessedVendorTxn => "Payment for an unknown fee (unprocessed)",
        K::ConservationViolation => "Community Pass balance does not add up",
    }
}

/// What a correction did, as a sentence fragment ("Posted a $25.00 payment
/// from Community Pass to Genesis").
pub fn action_label(action: &Action) -> String {
    match action {
        Action::PostVendorTxn { txn, .. } => format!(
            "Posted the {} {} from Community Pass to Genesis",
            format_money(txn.amount),
            txn.kind
        ),
        Action::LockAmount { .. } => {
            "Locked the fee's amount in Genesis (Community Pass took a payment)".to_string()
        }
        Action::PushFee { .. } => "Sent the fee's current state to Community Pass".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_label() {
        let mut labels: Vec<&str> = DiscrepancyKind::ALL
            .iter()
            .map(|k| kind_label(*k))
            .collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DiscrepancyKind::ALL.len());
    }
}
