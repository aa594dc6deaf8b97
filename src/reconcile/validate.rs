//! Whether a Community Pass transaction belongs in Genesis: the check
//! between the portal and posting (DESIGN.md §6, "hold, never drop; never
//! post what does not belong"). Pure: the shell passes what Genesis knows of
//! the fees, what it already posted, the batch and the clock; every record
//! comes back `Post`, `AlreadyPosted`, `Duplicate`, `CommunityPassOnly` or
//! `Hold` with a reason in words. Nothing is ever silently left out.
//!
//! A transaction is posted only when:
//! - its fee exists in Genesis;
//! - its `student_id` (when present) is the Genesis fee's student;
//! - its `vendor_fee_id` is the link's (when the link has one);
//! - its amount is positive and `occurred_at` is at most `CLOCK_SKEW_MAX`
//!   after now;
//! - a payment or waiver is not on a fee void in Genesis whose void was
//!   sent to Community Pass (the link's pushed status): nothing may be paid
//!   on it there. A fee voided in Genesis only after Community Pass took a
//!   payment (the void is then never sent) keeps the handbook's rule: the
//!   payment is posted and the fee reviewed (`fee_voided_after_payment`);
//!   money received is never held back for a decision about the fee;
//! - a waiver is not larger than the fee;
//! - a refund or reversal naming a payment (`reverses`) names one on the
//!   same fee that Genesis holds or that this batch posts, for no more than
//!   that payment nor what is still paid on the fee; one naming none stays
//!   within what is still paid on the fee (refunds of a payment stay
//!   possible on a fee voided after it was paid: that is the office's
//!   decision being carried out);
//! - no other copy of its id differs from it, in this batch or as posted.
//!
//! Records are judged in sequence order, so a payment earlier in the batch
//! counts for a refund later in it. A held record is retried by every later
//! pull and posted once it is valid (its fee was created, the clock caught
//! up, the payment it names arrived); conflicting copies wait for a person.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDateTime;

use super::input::FeeLink;
use crate::domain::{
    FeeId, FeeStatus, GenesisFee, GenesisTxn, StudentId, TxnKind, VendorTxn, VendorTxnId,
};
use crate::money::Money;

/// How far after the engine's clock a transaction may be dated: clocks of
/// two systems disagree by a little, never by more.
pub const CLOCK_SKEW_MAX_MINUTES: i64 = 10;

/// What Genesis knows of one fee, to judge transactions against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeFacts {
    pub fee_id: FeeId,
    pub student_id: StudentId,
    pub status: FeeStatus,
    pub amount: Money,
    /// The vendor fee id the link recorded, when Community Pass ever
    /// acknowledged a push of the fee.
    pub vendor_fee_id: Option<String>,
    /// The last push Community Pass acknowledged said the fee is void.
    pub void_sent: bool,
}

/// A Community Pass transaction Genesis already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedTxn {
    pub vendor_txn_id: VendorTxnId,
    pub fee_id: FeeId,
    pub kind: TxnKind,
    pub amount: Money,
}

/// Why a transaction is held instead of posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    FeeNotInGenesis(FeeId),
    StudentMismatch {
        txn_student: StudentId,
        fee_student: StudentId,
    },
    VendorFeeIdMismatch {
        txn_vendor_fee_id: String,
        link_vendor_fee_id: String,
    },
    AmountNotPositive(Money),
    InTheFuture {
        occurred_at: NaiveDateTime,
        now: NaiveDateTime,
    },
    OnVoidFee(TxnKind),
    WaiverLargerThanFee {
        amount: Money,
        fee_amount: Money,
    },
    ReversesUnknownPayment(VendorTxnId),
    ReversesPaymentOfAnotherFee {
        payment: VendorTxnId,
        fee_id: FeeId,
    },
    MoreThanThePayment {
        amount: Money,
        payment: VendorTxnId,
        payment_amount: Money,
    },
    MoreThanPaid {
        amount: Money,
        paid: Money,
    },
    /// Copies of one id that differ (each described), this batch's and
    /// Genesis's posting.
    ConflictingCopies(Vec<String>),
}

impl Hold {
    /// The rule's name, as in the rules table of `reconcile`.
    pub fn code(&self) -> &'static str {
        match self {
            Hold::FeeNotInGenesis(_) => "fee_not_in_genesis",
            Hold::StudentMismatch { .. } => "txn_student_mismatch",
            Hold::VendorFeeIdMismatch { .. } => "txn_vendor_fee_id_mismatch",
            Hold::AmountNotPositive(_) => "txn_amount_not_positive",
            Hold::InTheFuture { .. } => "txn_in_the_future",
            Hold::OnVoidFee(_) => "txn_on_void_fee",
            Hold::WaiverLargerThanFee { .. } => "waiver_larger_than_fee",
            Hold::ReversesUnknownPayment(_) => "reverses_unknown_payment",
            Hold::ReversesPaymentOfAnotherFee { .. } => "reverses_payment_of_another_fee",
            Hold::MoreThanThePayment { .. } => "undoes_more_than_the_payment",
            Hold::MoreThanPaid { .. } => "undoes_more_than_paid",
            Hold::ConflictingCopies(_) => "conflicting_copies",
        }
    }

    /// The reason in words, for the office.
    pub fn describe(&self) -> String {
        match self {
            Hold::FeeNotInGenesis(fee) => {
                format!("fee {fee} not found in Genesis (deleted, or never created there)")
            }
            Hold::StudentMismatch {
                txn_student,
                fee_student,
            } => format!(
                "the transaction names student {txn_student}, but Genesis fee belongs to student {fee_student}"
            ),
            Hold::VendorFeeIdMismatch {
                txn_vendor_fee_id,
                link_vendor_fee_id,
            } => format!(
                "the transaction names Community Pass fee {txn_vendor_fee_id}, but the fee was sent as {link_vendor_fee_id}"
            ),
            Hold::AmountNotPositive(amount) => {
                format!("the amount {amount} is not positive")
            }
            Hold::InTheFuture { occurred_at, now } => format!(
                "dated {occurred_at}, more than {CLOCK_SKEW_MAX_MINUTES} minutes after now ({now}); posted once that time has come"
            ),
            Hold::OnVoidFee(kind) => format!(
                "a {kind} on a fee that is void in Genesis and was sent to Community Pass as void"
            ),
            Hold::WaiverLargerThanFee { amount, fee_amount } => {
                format!("a waiver of {amount} on a fee of {fee_amount}")
            }
            Hold::ReversesUnknownPayment(payment) => format!(
                "it undoes payment {payment}, which Genesis does not hold (posted once the payment is)"
            ),
            Hold::ReversesPaymentOfAnotherFee { payment, fee_id } => {
                format!("it undoes payment {payment}, which is on fee {fee_id}")
            }
            Hold::MoreThanThePayment {
                amount,
                payment,
                payment_amount,
            } => format!("it undoes {amount} of payment {payment}, which was {payment_amount}"),
            Hold::MoreThanPaid { amount, paid } => format!(
                "it undoes {amount}, but only {paid} paid through Community Pass is left on the fee"
            ),
            Hold::ConflictingCopies(copies) => format!(
                "Community Pass delivered this id with different contents; none is posted until a person decides: {}",
                copies.join(" | ")
            ),
        }
    }
}

/// What becomes of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Post it to this Genesis fee.
    Post(FeeId),
    /// Genesis already holds it, as delivered.
    AlreadyPosted(FeeId),
    /// An identical copy of an earlier record of the batch.
    Duplicate,
    /// On a fee that exists only in Community Pass: never synced.
    CommunityPassOnly,
    Hold(Hold),
}

/// What Genesis knows, for `judge`.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    pub fees: &'a HashMap<FeeId, FeeFacts>,
    /// Genesis's postings of Community Pass transactions on these fees and
    /// of the batch's ids.
    pub posted: &'a [PostedTxn],
}

/// Money paid through Community Pass that is still on a fee, and the
/// payments known on it (posted or accepted in this batch).
#[derive(Debug, Default)]
struct FeeLedger {
    paid: Money,
}

/// The facts `judge` needs, from Genesis's fees, the integration's links and
/// Genesis's transactions (those posted from Community Pass are kept).
pub fn facts_of(
    fees: &[GenesisFee],
    links: &[FeeLink],
    txns: &[GenesisTxn],
) -> (HashMap<FeeId, FeeFacts>, Vec<PostedTxn>) {
    let vendor_ids: HashMap<FeeId, &String> = links
        .iter()
        .filter_map(|link| link.vendor_fee_id.as_ref().map(|v| (link.fee_id, v)))
        .collect();
    let void_sent: std::collections::HashSet<FeeId> = links
        .iter()
        .filter(|link| link.was_sent() && link.pushed_status == Some(FeeStatus::Void))
        .map(|link| link.fee_id)
        .collect();
    let facts = fees
        .iter()
        .map(|fee| {
            (
                fee.id,
                FeeFacts {
                    fee_id: fee.id,
                    student_id: fee.student_id,
                    status: fee.status,
                    amount: fee.amount,
                    vendor_fee_id: vendor_ids.get(&fee.id).map(|v| (*v).clone()),
                    void_sent: void_sent.contains(&fee.id),
                },
            )
        })
        .collect();
    let posted = txns
        .iter()
        .filter_map(|txn| {
            txn.vendor_txn_id.as_ref().map(|id| PostedTxn {
                vendor_txn_id: id.clone(),
                fee_id: txn.fee_id,
                kind: txn.kind,
                amount: txn.amount,
            })
        })
        .collect();
    (facts, posted)
}

/// `facts_of` for just what judging `txns` reads: the fees they name, the
/// fees their ids are already posted on, and the fees of the payments they
/// undo (with every posting on those fees). Judging `txns` against these
/// facts gives the verdicts it gives against the whole of Genesis.
pub fn facts_for(
    txns: &[&VendorTxn],
    fees: &[GenesisFee],
    links: &[FeeLink],
    genesis_txns: &[GenesisTxn],
) -> (HashMap<FeeId, FeeFacts>, Vec<PostedTxn>) {
    let named: std::collections::HashSet<&VendorTxnId> = txns
        .iter()
        .flat_map(|txn| std::iter::once(&txn.id).chain(txn.reverses.as_ref()))
        .collect();
    let mut wanted: std::collections::HashSet<FeeId> =
        txns.iter().filter_map(|txn| txn.genesis_fee_id).collect();
    wanted.extend(
        genesis_txns
            .iter()
            .filter(|txn| {
                txn.vendor_txn_id
                    .as_ref()
                    .is_some_and(|id| named.contains(id))
            })
            .map(|txn| txn.fee_id),
    );
    let fees: Vec<GenesisFee> = fees
        .iter()
        .filter(|fee| wanted.contains(&fee.id))
        .cloned()
        .collect();
    let links: Vec<FeeLink> = links
        .iter()
        .filter(|link| wanted.contains(&link.fee_id))
        .cloned()
        .collect();
    let genesis_txns: Vec<GenesisTxn> = genesis_txns
        .iter()
        .filter(|txn| wanted.contains(&txn.fee_id))
        .cloned()
        .collect();
    facts_of(&fees, &links, &genesis_txns)
}

/// Judges every record of a batch (in any order; judged in sequence
/// order). The verdicts are in the order of `txns`.
pub fn judge(txns: &[&VendorTxn], known: Known<'_>, now: NaiveDateTime) -> Vec<Verdict> {
    let mut verdicts: Vec<Option<Verdict>> = vec![None; txns.len()];
    let posted_by_id: HashMap<&VendorTxnId, Vec<&PostedTxn>> =
        known.posted.iter().fold(HashMap::new(), |mut map, p| {
            map.entry(&p.vendor_txn_id).or_default().push(p);
            map
        });
    // Copies by id: identical ones are duplicates; different ones conflict.
    let mut copies: BTreeMap<&VendorTxnId, Vec<usize>> = BTreeMap::new();
    for (i, txn) in txns.iter().enumerate() {
        let seen = copies.entry(&txn.id).or_default();
        if seen.iter().any(|j| txns[*j].same_record(txn)) {
            verdicts[i] = Some(Verdict::Duplicate);
        } else {
            seen.push(i);
        }
    }
    for (id, indexes) in &copies {
        let posted = posted_by_id.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let differs_from_posting = |txn: &VendorTxn| {
            posted.iter().any(|p| {
                Some(p.fee_id) != txn.genesis_fee_id || p.kind != txn.kind || p.amount != txn.amount
            })
        };
        let conflicting =
            indexes.len() > 1 || indexes.iter().any(|i| differs_from_posting(txns[*i]));
        let community_pass_only =
            posted.is_empty() && indexes.iter().all(|i| txns[*i].genesis_fee_id.is_none());
        if conflicting && community_pass_only {
            // Never synced, whatever its copies say.
            for i in indexes {
                verdicts[*i] = Some(Verdict::CommunityPassOnly);
            }
        } else if conflicting {
            let mut described: Vec<String> = indexes
                .iter()
                .map(|i| format!("copy {}", txns[*i].describe()))
                .collect();
            described.extend(posted.iter().map(|p| {
                format!(
                    "posted in Genesis as {} {} on fee {}",
                    p.kind, p.amount, p.fee_id
                )
            }));
            for i in indexes {
                verdicts[*i] = Some(Verdict::Hold(Hold::ConflictingCopies(described.clone())));
            }
        } else if let (Some(p), [i]) = (posted.first(), indexes.as_slice()) {
            verdicts[*i] = Some(Verdict::AlreadyPosted(p.fee_id));
        }
    }
    // Money still paid per fee, and each payment's amount and fee.
    let mut ledgers: HashMap<FeeId, FeeLedger> = HashMap::new();
    let mut payments: HashMap<VendorTxnId, (FeeId, Money)> = HashMap::new();
    for p in known.posted {
        let ledger = ledgers.entry(p.fee_id).or_default();
        match p.kind {
            TxnKind::Payment => {
                ledger.paid += p.amount;
                payments.insert(p.vendor_txn_id.clone(), (p.fee_id, p.amount));
            }
            TxnKind::Refund | TxnKind::Reversal => ledger.paid -= p.amount,
            TxnKind::Waiver => {}
        }
    }
    let mut order: Vec<usize> = (0..txns.len()).filter(|i| verdicts[*i].is_none()).collect();
    order.sort_by_key(|i| (txns[*i].sequence, *i));
    for i in order {
        let txn = txns[i];
        let verdict = match one(txn, known, &ledgers, &payments, now) {
            Ok(Some(fee)) => {
                let ledger = ledgers.entry(fee).or_default();
                match txn.kind {
                    TxnKind::Payment => {
                        ledger.paid += txn.amount;
                        payments.insert(txn.id.clone(), (fee, txn.amount));
                    }
                    TxnKind::Refund | TxnKind::Reversal => ledger.paid -= txn.amount,
                    TxnKind::Waiver => {}
                }
                Verdict::Post(fee)
            }
            Ok(None) => Verdict::CommunityPassOnly,
            Err(hold) => Verdict::Hold(hold),
        };
        verdicts[i] = Some(verdict);
    }
    verdicts
        .into_iter()
        .map(|v| v.expect("every record is judged"))
        .collect()
}

/// One record against the fee and what is known so far: the fee to post it
/// to, `None` for a Community Pass-only fee, or why it is held.
fn one(
    txn: &VendorTxn,
    known: Known<'_>,
    ledgers: &HashMap<FeeId, FeeLedger>,
    payments: &HashMap<VendorTxnId, (FeeId, Money)>,
    now: NaiveDateTime,
) -> Result<Option<FeeId>, Hold> {
    let Some(fee_id) = txn.genesis_fee_id else {
        return Ok(None);
    };
    let fee = known
        .fees
        .get(&fee_id)
        .ok_or(Hold::FeeNotInGenesis(fee_id))?;
    if let Some(student) = txn.student_id {
        if student != fee.student_id {
            return Err(Hold::StudentMismatch {
                txn_student: student,
                fee_student: fee.student_id,
            });
        }
    }
    if let Some(linked) = &fee.vendor_fee_id {
        if *linked != txn.vendor_fee_id {
            return Err(Hold::VendorFeeIdMismatch {
                txn_vendor_fee_id: txn.vendor_fee_id.clone(),
                link_vendor_fee_id: linked.clone(),
            });
        }
    }
    if !txn.amount.is_positive() {
        return Err(Hold::AmountNotPositive(txn.amount));
    }
    if txn.occurred_at > now + chrono::Duration::minutes(CLOCK_SKEW_MAX_MINUTES) {
        return Err(Hold::InTheFuture {
            occurred_at: txn.occurred_at,
            now,
        });
    }
    let paid = ledgers.get(&fee_id).map_or(Money::ZERO, |l| l.paid);
    match txn.kind {
        TxnKind::Payment | TxnKind::Waiver if fee.status == FeeStatus::Void && fee.void_sent => {
            Err(Hold::OnVoidFee(txn.kind))
        }
        TxnKind::Waiver if txn.amount > fee.amount => Err(Hold::WaiverLargerThanFee {
            amount: txn.amount,
            fee_amount: fee.amount,
        }),
        TxnKind::Payment | TxnKind::Waiver => Ok(Some(fee_id)),
        TxnKind::Refund | TxnKind::Reversal => {
            if let Some(payment) = &txn.reverses {
                let (payment_fee, payment_amount) = payments
                    .get(payment)
                    .copied()
                    .ok_or_else(|| Hold::ReversesUnknownPayment(payment.clone()))?;
                if payment_fee != fee_id {
                    return Err(Hold::ReversesPaymentOfAnotherFee {
                        payment: payment.clone(),
                        fee_id: payment_fee,
                    });
                }
                if txn.amount > payment_amount {
                    return Err(Hold::MoreThanThePayment {
                        amount: txn.amount,
                        payment: payment.clone(),
                        payment_amount,
                    });
                }
            }
            if txn.amount > paid {
                return Err(Hold::MoreThanPaid {
                    amount: txn.amount,
                    paid,
                });
            }
            Ok(Some(fee_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    fn at(hour: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 11, 28)
            .unwrap()
            .and_hms_opt(hour, 0, 0)
            .unwrap()
    }

    fn fees() -> HashMap<FeeId, FeeFacts> {
        let mut fees = HashMap::new();
        for (id, student, status) in [
            (10, 100001, FeeStatus::Open),
            (11, 100001, FeeStatus::Void),
            (12, 100002, FeeStatus::Open),
        ] {
            fees.insert(
                FeeId(id),
                FeeFacts {
                    fee_id: FeeId(id),
                    student_id: StudentId(student),
                    status,
                    amount: Money::from_cents(9900),
                    vendor_fee_id: Some(format!("CPF{id}")),
                    void_sent: status == FeeStatus::Void,
                },
            );
        }
        fees
    }

    fn txn(id: &str, sequence: i64, fee: i64, kind: TxnKind, cents: i64) -> VendorTxn {
        VendorTxn {
            id: VendorTxnId(id.into()),
            sequence,
            genesis_fee_id: Some(FeeId(fee)),
            vendor_fee_id: format!("CPF{fee}"),
            student_id: Some(StudentId(if fee == 12 { 100002 } else { 100001 })),
            kind,
            amount: Money::from_cents(cents),
            method: "card".into(),
            occurred_at: at(9),
            reverses: None,
        }
    }

    fn verdicts(txns: &[VendorTxn], posted: &[PostedTxn]) -> Vec<Verdict> {
        let fees = fees();
        let refs: Vec<&VendorTxn> = txns.iter().collect();
        judge(
            &refs,
            Known {
                fees: &fees,
                posted,
            },
            at(12),
        )
    }

    fn code(verdict: &Verdict) -> &'static str {
        match verdict {
            Verdict::Hold(hold) => hold.code(),
            Verdict::Post(_) => "post",
            Verdict::AlreadyPosted(_) => "already",
            Verdict::Duplicate => "duplicate",
            Verdict::CommunityPassOnly => "cp_only",
        }
    }

    fn genesis_fee(id: i64, status: FeeStatus) -> GenesisFee {
        GenesisFee {
            id: FeeId(id),
            student_id: StudentId(if id == 12 { 100002 } else { 100001 }),
            category: "BUS".into(),
            school: "HS".into(),
            description: "Bus".into(),
            amount: Money::from_cents(9900),
            fee_date: at(1).date(),
            due_date: None,
            status,
            created_at: at(1),
            modified_at: at(1),
        }
    }

    fn kind_of(index: u8) -> TxnKind {
        [
            TxnKind::Payment,
            TxnKind::Refund,
            TxnKind::Waiver,
            TxnKind::Reversal,
        ][usize::from(index % 4)]
    }

    proptest! {
        /// Judging a batch against `facts_for` (just what it reads) gives
        /// the verdicts of judging it against the whole of Genesis.
        #[test]
        fn facts_for_a_batch_judge_as_the_whole_of_genesis(
            postings in proptest::collection::vec((0u8..8, 10i64..16, 0u8..4, 1i64..5000), 0..12),
            batch in proptest::collection::vec(
                (0u8..10, 10i64..16, 0u8..4, 1i64..5000, proptest::option::of(0u8..10)),
                1..8,
            ),
        ) {
            let fees: Vec<GenesisFee> = (10..16)
                .map(|id| genesis_fee(id, if id == 11 { FeeStatus::Void } else { FeeStatus::Open }))
                .collect();
            let links: Vec<FeeLink> = (10..16)
                .map(|id| FeeLink {
                    vendor_fee_id: Some(format!("CPF{id}")),
                    ..FeeLink::unsent(FeeId(id))
                })
                .collect();
            let genesis_txns: Vec<GenesisTxn> = postings
                .iter()
                .enumerate()
                .map(|(i, (id, fee, kind, cents))| GenesisTxn {
                    id: i as i64,
                    fee_id: FeeId(*fee),
                    kind: kind_of(*kind),
                    amount: Money::from_cents(*cents),
                    method: "card".into(),
                    source: crate::domain::TxnSource::CommunityPass,
                    vendor_txn_id: Some(VendorTxnId(format!("P{id}"))),
                    posted_at: at(2),
                })
                .collect();
            let txns: Vec<VendorTxn> = batch
                .iter()
                .enumerate()
                .map(|(i, (id, fee, kind, cents, reverses))| VendorTxn {
                    reverses: reverses.map(|r| VendorTxnId(format!("P{r}"))),
                    ..txn(&format!("P{id}"), i as i64, *fee, kind_of(*kind), *cents)
                })
                .collect();
            let refs: Vec<&VendorTxn> = txns.iter().collect();
            let (all_fees, all_posted) = facts_of(&fees, &links, &genesis_txns);
            let (some_fees, some_posted) = facts_for(&refs, &fees, &links, &genesis_txns);
            let whole = judge(&refs, Known { fees: &all_fees, posted: &all_posted }, at(12));
            let just = judge(&refs, Known { fees: &some_fees, posted: &some_posted }, at(12));
            prop_assert_eq!(whole, just);
        }
    }

    #[test]
    fn each_rule_holds_what_does_not_belong() {
        let mut other_student = txn("S", 1, 10, TxnKind::Payment, 100);
        other_student.student_id = Some(StudentId(100004));
        let mut unknown_vendor_fee = txn("V", 2, 10, TxnKind::Payment, 100);
        unknown_vendor_fee.vendor_fee_id = "CPF999".into();
        let mut future = txn("F", 3, 10, TxnKind::Payment, 100);
        future.occurred_at = at(12) + chrono::Duration::minutes(11);
        let mut skew = txn("K", 4, 10, TxnKind::Payment, 100);
        skew.occurred_at = at(12) + chrono::Duration::minutes(9);
        let mut bogus_refund = txn("R", 5, 10, TxnKind::Refund, 100);
        bogus_refund.reverses = Some(VendorTxnId("NOPE".into()));
        let mut huge_reversal = txn("X", 6, 10, TxnKind::Reversal, 500_000);
        huge_reversal.reverses = Some(VendorTxnId("K".into()));
        let cases = vec![
            other_student,
            unknown_vendor_fee,
            future,
            skew,
            bogus_refund,
            huge_reversal,
            txn("VOID", 7, 11, TxnKind::Payment, 100),
            txn("GONE", 8, 99, TxnKind::Payment, 100),
            txn("UNPAID", 9, 12, TxnKind::Refund, 100),
            txn("W", 10, 12, TxnKind::Waiver, 9901),
            txn("Z", 11, 12, TxnKind::Payment, 0),
        ];
        let codes: Vec<&str> = verdicts(&cases, &[]).iter().map(code).collect();
        assert_eq!(
            codes,
            vec![
                "txn_student_mismatch",
                "txn_vendor_fee_id_mismatch",
                "txn_in_the_future",
                "post",
                "reverses_unknown_payment",
                "undoes_more_than_the_payment",
                "txn_on_void_fee",
                "fee_not_in_genesis",
                "undoes_more_than_paid",
                "waiver_larger_than_fee",
                "txn_amount_not_positive",
            ]
        );
    }

    #[test]
    fn refunds_count_payments_posted_or_earlier_in_the_batch() {
        let posted = [PostedTxn {
            vendor_txn_id: VendorTxnId("P0".into()),
            fee_id: FeeId(10),
            kind: TxnKind::Payment,
            amount: Money::from_cents(1000),
        }];
        let mut refund_of_posted = txn("R0", 5, 10, TxnKind::Refund, 1000);
        refund_of_posted.reverses = Some(VendorTxnId("P0".into()));
        let mut reversal = txn("R1", 7, 10, TxnKind::Reversal, 500);
        reversal.reverses = Some(VendorTxnId("P1".into()));
        // Delivered out of order: judged by sequence.
        let batch = vec![
            reversal,
            refund_of_posted,
            txn("P1", 6, 10, TxnKind::Payment, 500),
        ];
        let codes: Vec<&str> = verdicts(&batch, &posted).iter().map(code).collect();
        assert_eq!(codes, vec!["post", "post", "post"]);
        // A refund of a payment on a fee voided since is the office's decision.
        let posted_void = [PostedTxn {
            fee_id: FeeId(11),
            ..posted[0].clone()
        }];
        let mut refund = txn("R2", 8, 11, TxnKind::Refund, 1000);
        refund.reverses = Some(VendorTxnId("P0".into()));
        assert_eq!(code(&verdicts(&[refund], &posted_void)[0]), "post");
    }

    #[test]
    fn conflicting_copies_are_all_held_and_identical_ones_are_silent() {
        let first = txn("DUPY", 1, 20, TxnKind::Payment, 100);
        let mut fees = fees();
        fees.insert(
            FeeId(20),
            FeeFacts {
                fee_id: FeeId(20),
                student_id: StudentId(100001),
                status: FeeStatus::Open,
                amount: Money::from_cents(9900),
                vendor_fee_id: None,
                void_sent: false,
            },
        );
        let mut second = first.clone();
        second.sequence = 2;
        second.amount = Money::from_cents(325);
        let mut again = first.clone();
        again.sequence = 3;
        let batch = [&first, &second, &again];
        let known = Known {
            fees: &fees,
            posted: &[],
        };
        let out = judge(&batch, known, at(12));
        assert_eq!(code(&out[0]), "conflicting_copies");
        assert_eq!(code(&out[1]), "conflicting_copies");
        assert_eq!(out[2], Verdict::Duplicate);
        let Verdict::Hold(hold) = &out[0] else {
            unreachable!()
        };
        assert!(hold.describe().contains("payment 1.00"));
        assert!(hold.describe().contains("payment 3.25"));
        // A copy that differs from what Genesis posted conflicts too.
        let posted = [PostedTxn {
            vendor_txn_id: VendorTxnId("DUPY".into()),
            fee_id: FeeId(20),
            kind: TxnKind::Payment,
            amount: Money::from_cents(100),
        }];
        let known = Known {
            fees: &fees,
            posted: &posted,
        };
        assert_eq!(
            code(&judge(&[&second], known, at(12))[0]),
            "conflicting_copies"
        );
        assert_eq!(code(&judge(&[&first], known, at(12))[0]), "already");
        // Copies on a fee that exists only in Community Pass are never synced.
        let (mut only, mut other) = (first.clone(), second.clone());
        only.genesis_fee_id = None;
        other.genesis_fee_id = None;
        let known = Known {
            fees: &fees,
            posted: &[],
        };
        let out = judge(&[&only, &other], known, at(12));
        assert_eq!(
            out,
            vec![Verdict::CommunityPassOnly, Verdict::CommunityPassOnly]
        );
    }

    /// One generated record: which id (few, so ids repeat), which fee, and
    /// which way it may be wrong.
    fn record() -> impl Strategy<Value = VendorTxn> {
        (0..6usize, 0..4i64, 0..4u8, 1..20_000i64, 0..8u8, 0..40i64).prop_map(
            |(id, fee, kind, cents, flaw, sequence)| {
                let kind = [
                    TxnKind::Payment,
                    TxnKind::Refund,
                    TxnKind::Waiver,
                    TxnKind::Reversal,
                ][usize::from(kind)];
                let mut t = txn(&format!("T{id}"), sequence, 10 + fee, kind, cents);
                match flaw {
                    0 => t.student_id = Some(StudentId(100009)),
                    1 => t.vendor_fee_id = "CPF999".into(),
                    2 => t.occurred_at = at(23),
                    3 => t.reverses = Some(VendorTxnId(format!("T{}", (id + 1) % 6))),
                    _ => {}
                }
                t
            },
        )
    }

    proptest! {
        /// Whatever mix of valid, duplicate, conflicting and implausible
        /// records arrives, every vendor id ends posted exactly once or held
        /// with a reason, never both, never neither.
        #[test]
        fn every_id_posted_once_or_held(records in proptest::collection::vec(record(), 0..30)) {
            let refs: Vec<&VendorTxn> = records.iter().collect();
            let fees = fees();
            let out = judge(&refs, Known { fees: &fees, posted: &[] }, at(12));
            prop_assert_eq!(out.len(), records.len());
            let mut posted: BTreeMap<&VendorTxnId, usize> = BTreeMap::new();
            let mut held: BTreeMap<&VendorTxnId, usize> = BTreeMap::new();
            for (txn, verdict) in records.iter().zip(&out) {
                match verdict {
                    Verdict::Post(fee) => {
                        prop_assert_eq!(Some(*fee), txn.genesis_fee_id);
                        *posted.entry(&txn.id).or_default() += 1;
                    }
                    Verdict::Hold(hold) => {
                        prop_assert!(!hold.describe().is_empty());
                        *held.entry(&txn.id).or_default() += 1;
                    }
                    Verdict::Duplicate => {}
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            for txn in &records {
                let p = posted.get(&txn.id).copied().unwrap_or(0);
                let h = held.get(&txn.id).copied().unwrap_or(0);
                prop_assert!(p <= 1, "{} posted {} times", txn.id, p);
                prop_assert!(p + h > 0, "{} neither posted nor held", txn.id);
                prop_assert!(p == 0 || h == 0, "{} both posted and held", txn.id);
                if p == 1 {
                    // A posted record belongs: its fee, student and vendor fee id match.
                    let fee = &fees[&txn.genesis_fee_id.unwrap()];
                    prop_assert_eq!(txn.student_id, Some(fee.student_id));
                    prop_assert_eq!(Some(&txn.vendor_fee_id), fee.vendor_fee_id.as_ref());
                    prop_assert!(txn.occurred_at <= at(12) + chrono::Duration::minutes(CLOCK_SKEW_MAX_MINUTES));
                }
            }
            // Refunds and reversals posted never exceed payments posted, per fee.
            let mut net: BTreeMap<FeeId, Money> = BTreeMap::new();
            let mut posted_in_order: Vec<&VendorTxn> = records
                .iter()
                .zip(&out)
                .filter(|(_, v)| matches!(v, Verdict::Post(_)))
                .map(|(t, _)| t)
                .collect();
            posted_in_order.sort_by_key(|t| t.sequence);
            for txn in posted_in_order {
                let entry = net.entry(txn.genesis_fee_id.unwrap()).or_insert(Money::ZERO);
                match txn.kind {
                    TxnKind::Payment => *entry += txn.amount,
                    TxnKind::Refund | TxnKind::Reversal => *entry -= txn.amount,
                    TxnKind::Waiver => {}
                }
                prop_assert!(!entry.is_negative());
            }
        }
    }
}
