//! Each side's money totals over the examined fees, and the conservation
//! check of DESIGN.md §4: `amount − payments − waivers + refunds + reversals
//! == balance`, per fee and in total, on both sides.
//!
//! Genesis stores no balance: its balance is defined by the identity, so the
//! Genesis check is that its totals add up. Community Pass stores a balance
//! per fee, which is checked against its own totals.
//!
//! A fee's status does not enter the identity: a void or waived fee's amount
//! stays billed until a transaction (a waiver, say) offsets it, on both
//! sides alike, so the two sides' totals stay comparable. What a void or
//! waived fee still shows as owed is `written_off`, never `outstanding`:
//! the family owes nothing for it.

use crate::domain::{FeeId, FeeStatus, GenesisTxn, VendorFee, VendorFeeStatus};
use crate::money::Money;

use super::case::{is_manual, FeeCase};
use super::input::VendorSnapshot;
use super::output::{SideTotals, Totals};
use super::rules::{vendor_identity_balance, VendorLedger};

/// Adds one fee's figures to a side's totals.
fn add_fee(
    totals: &mut SideTotals,
    amount: Money,
    credit: Money,
    ledger: VendorLedger,
    balance: Money,
    owes_nothing: bool,
) {
    totals.billed += amount;
    totals.genesis_credit += credit;
    totals.paid += ledger.paid;
    totals.refunded += ledger.refunded;
    totals.waived += ledger.waived;
    totals.reversed += ledger.reversed;
    if balance.is_negative() {
        totals.credit += -balance;
    } else if owes_nothing {
        totals.written_off += balance;
    } else {
        totals.outstanding += balance;
    }
}

/// The Genesis side of one case.
fn add_genesis_case(totals: &mut SideTotals, case: &FeeCase<'_>) {
    let amount: Money = case.genesis_fees.iter().map(|(_, fee)| fee.amount).sum();
    let credit = case.genesis_credit();
    let mut ledger = VendorLedger::default();
    for (_, txn) in case.genesis_txns.iter().filter(|(_, txn)| !is_manual(txn)) {
        ledger.add(txn.kind, txn.amount);
    }
    let balance = genesis_balance(amount, case.genesis_txns.iter().map(|(_, txn)| *txn));
    let owes_nothing = !case.genesis_fees.is_empty()
        && case
            .genesis_fees
            .iter()
            .all(|(_, fee)| matches!(fee.status, FeeStatus::Void | FeeStatus::Waived));
    add_fee(totals, amount, credit, ledger, balance, owes_nothing);
}

/// A Genesis fee's balance: its amount moved by every transaction on it.
pub fn genesis_balance<'t>(amount: Money, txns: impl Iterator<Item = &'t GenesisTxn>) -> Money {
    amount
        + txns
            .map(|txn| txn.kind.balance_effect(txn.amount))
            .sum::<Money>()
}

fn add_vendor_fee(totals: &mut SideTotals, fee: &VendorFee) {
    let ledger = VendorLedger {
        paid: fee.paid,
        refunded: fee.refunded,
        waived: fee.waived,
        reversed: fee.reversed,
    };
    let owes_nothing = matches!(fee.status, VendorFeeStatus::Void | VendorFeeStatus::Waived);
    add_fee(
        totals,
        fee.amount,
        fee.genesis_credit,
        ledger,
        fee.balance,
        owes_nothing,
    );
}

/// Both sides' totals over the examined cases.
pub(crate) fn totals_of(cases: &[FeeCase<'_>]) -> Totals {
    let mut totals = Totals::default();
    for case in cases {
        add_genesis_case(&mut totals.genesis, case);
        for (_, fee) in case.vendor_fees {
            add_vendor_fee(&mut totals.community_pass, fee);
        }
    }
    totals
}

impl SideTotals {
    /// `billed − genesis_credit − paid − waived + refunded + reversed`.
    pub fn identity_balance(&self) -> Money {
        self.billed - self.genesis_credit - self.paid - self.waived + self.refunded + self.reversed
    }

    /// `outstanding + written_off − credit`: the net of every balance the
    /// side holds (what the identity must equal).
    pub fn net_balance(&self) -> Money {
        self.outstanding + self.written_off - self.credit
    }
}

/// Where conservation does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConservationError {
    #[error("{side} totals break conservation: the identity gives {identity} but the balances sum to {reported}")]
    Totals {
        side: &'static str,
        identity: Money,
        reported: Money,
    },
    #[error(
        "Community Pass fee {fee_id} breaks conservation: balance {balance}, identity {identity}"
    )]
    VendorFee {
        fee_id: FeeId,
        balance: Money,
        identity: Money,
    },
}

/// Checks conservation on both sides' totals and on every Community Pass fee
/// of the snapshot. The shell calls this after applying a plan and fails the
/// run loudly on an error.
pub fn check_conservation(
    totals: &Totals,
    vendor: &VendorSnapshot,
) -> Result<(), ConservationError> {
    let sides = [
        ("genesis", &totals.genesis),
        ("community_pass", &totals.community_pass),
    ];
    for (side, side_totals) in sides {
        if side_totals.identity_balance() != side_totals.net_balance() {
            return Err(ConservationError::Totals {
                side,
                identity: side_totals.identity_balance(),
                reported: side_totals.net_balance(),
            });
        }
    }
    for fee in &vendor.fees {
        let identity = vendor_identity_balance(fee);
        if identity != fee.balance {
            return Err(ConservationError::VendorFee {
                fee_id: fee.genesis_fee_id,
                balance: fee.balance,
                identity,
            });
        }
    }
    Ok(())
}
