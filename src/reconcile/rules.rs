//! The rules of DESIGN.md §3 applied to one fee case: which discrepancies the
//! case has, what each resolves to, and how every record of the case ends.
//! Pure functions of one case and the global facts; no shared state.

use std::collections::BTreeMap;

use crate::domain::{
    FeeStatus, GenesisFee, GenesisTxn, TxnKind, VendorFee, VendorFeeStatus, VendorTxn, VendorTxnId,
};
use crate::money::Money;

use super::case::{is_manual, FeeCase, GlobalFacts, RecordRef};
use super::input::Policy;
use super::output::{Action, Discrepancy, DiscrepancyKind, Resolution};

/// How one input record ended; a record touched by several discrepancies
/// ends as the most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    Matched,
    Corrected,
    NeedsReview,
}

impl Outcome {
    fn of(resolution: &Resolution) -> Outcome {
        match resolution {
            Resolution::Planned(_) => Outcome::Corrected,
            Resolution::NeedsReview { .. } => Outcome::NeedsReview,
        }
    }
}

/// What judging one case produced.
#[derive(Debug, Default)]
pub(crate) struct CaseReport {
    pub discrepancies: Vec<Discrepancy>,
    pub outcomes: Vec<(RecordRef, Outcome)>,
}

/// Judges one fee case.
pub(crate) fn judge(case: &FeeCase<'_>, facts: &GlobalFacts<'_>, policy: &Policy) -> CaseReport {
    let mut judge = Judge {
        case,
        facts,
        policy,
        report: CaseReport::default(),
    };
    judge.fee_level();
    judge.transactions();
    judge.amount_lock();
    judge.overpayment();
    judge.report
}

struct Judge<'c, 'a> {
    case: &'c FeeCase<'a>,
    facts: &'c GlobalFacts<'a>,
    policy: &'c Policy,
    report: CaseReport,
}

/// The values a fee comparison shows for one side.
struct FeeValues {
    amount: Money,
    status: String,
    credit: Money,
}

impl FeeValues {
    fn of_genesis(fee: &GenesisFee, credit: Money) -> FeeValues {
        FeeValues {
            amount: fee.amount,
            status: fee.status.to_string(),
            credit,
        }
    }

    fn of_vendor(fee: &VendorFee) -> FeeValues {
        FeeValues {
            amount: fee.amount,
            status: fee.status.to_string(),
            credit: fee.genesis_credit,
        }
    }

    fn render(&self) -> String {
        format!(
            "amount {}; status {}; credit {}",
            self.amount, self.status, self.credit
        )
    }

    /// `render`, followed by the fields that differ between the sides.
    fn render_with(&self, details: &[String]) -> String {
        if details.is_empty() {
            self.render()
        } else {
            format!("{}; {}", self.render(), details.join("; "))
        }
    }
}

/// One field Community Pass shows that differs from what Genesis says:
/// its name and each side's value, in words.
struct FieldDifference {
    field: &'static str,
    genesis: String,
    community_pass: String,
}

impl FieldDifference {
    fn of(field: &'static str, genesis: String, community_pass: String) -> Option<Self> {
        (genesis != community_pass).then_some(FieldDifference {
            field,
            genesis,
            community_pass,
        })
    }
}

fn show_date(date: Option<chrono::NaiveDate>) -> String {
    date.map_or_else(|| "none".to_string(), |d| d.to_string())
}

/// The same guardians, whatever the order Community Pass lists them in
/// (Genesis's list is sorted and without repeats).
fn same_guardians(
    sorted: &[crate::domain::GuardianId],
    shown: &[crate::domain::GuardianId],
) -> bool {
    if shown.windows(2).all(|pair| pair[0] < pair[1]) {
        return sorted == shown;
    }
    let mut shown = shown.to_vec();
    shown.sort();
    shown.dedup();
    sorted == shown.as_slice()
}

fn show_guardians(ids: &[crate::domain::GuardianId]) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl<'c, 'a> Judge<'c, 'a> {
    // ----- recording -------------------------------------------------------

    fn flag(
        &mut self,
        kind: DiscrepancyKind,
        values: (Option<String>, Option<String>),
        vendor_txn_id: Option<VendorTxnId>,
        resolution: Resolution,
        records: &[RecordRef],
    ) {
        let outcome = Outcome::of(&resolution);
        self.mark(records, outcome);
        let at_stake = self.at_stake(kind, vendor_txn_id.as_ref());
        self.report.discrepancies.push(Discrepancy {
            kind,
            fee_id: self.case.fee_id,
            student_id: self.case.student_id(),
            vendor_txn_id,
            genesis_value: values.0,
            cp_value: values.1,
            resolution,
            at_stake,
        });
    }

    /// The dollars one discrepancy is about (never negative): the named
    /// transaction's amount, an overpayment's credit, else how far the two
    /// sides' balances are apart (or the only side's balance).
    fn at_stake(&self, kind: DiscrepancyKind, vendor_txn_id: Option<&VendorTxnId>) -> Money {
        if let Some(id) = vendor_txn_id {
            let vendor = self.case.vendor_txns.iter().map(|(_, t)| t);
            if let Some(txn) = vendor.filter(|t| &t.id == id).map(|t| t.amount).next() {
                return txn.abs();
            }
            let genesis = self.case.genesis_txns.iter().map(|(_, t)| t);
            if let Some(amount) = genesis
                .filter(|t| t.vendor_txn_id.as_ref() == Some(id))
                .map(|t| t.amount)
                .next()
            {
                return amount.abs();
            }
        }
        if kind == DiscrepancyKind::OverpaymentCredit {
            return self
                .projected_balance()
                .map(|balance| (-balance).max(Money::ZERO))
                .unwrap_or(Money::ZERO);
        }
        // The balance both sides will show once Community Pass's money is
        // posted, against what Community Pass shows; equal balances put
        // the money that moved (or the fee's amount) at stake.
        let genesis = self.case.genesis_fee().and(self.projected_balance());
        let vendor = self.case.vendor_fee();
        let moved = vendor
            .map(|fee| fee.paid - fee.refunded)
            .filter(|m| *m > Money::ZERO);
        match (genesis, vendor) {
            (Some(g), Some(v)) if g != v.balance => (g - v.balance).abs(),
            (_, Some(v)) => moved.unwrap_or(v.amount).abs(),
            (Some(_), None) => self
                .case
                .genesis_fee()
                .map_or(Money::ZERO, |f| f.amount.abs()),
            (None, None) => Money::ZERO,
        }
    }

    fn mark(&mut self, records: &[RecordRef], outcome: Outcome) {
        self.report
            .outcomes
            .extend(records.iter().map(|record| (*record, outcome)));
    }

    fn review(&self, reason: &str, suggested_action: &str) -> Resolution {
        Resolution::review(reason, suggested_action)
    }

    /// Both sides' fee records and the manual Genesis transactions: what a
    /// fee-level discrepancy is about.
    fn fee_records(&self) -> Vec<RecordRef> {
        let case = self.case;
        let fees = case
            .genesis_fees
            .iter()
            .map(|(i, _)| RecordRef::GenesisFee(*i));
        let manual = case.manual_txns().map(|(i, _)| RecordRef::GenesisTxn(*i));
        let vendor = case
            .vendor_fees
            .iter()
            .map(|(i, _)| RecordRef::VendorFee(*i));
        fees.chain(manual).chain(vendor).collect()
    }

    fn all_genesis_txn_records(&self) -> Vec<RecordRef> {
        self.case
            .genesis_txns
            .iter()
            .map(|(i, _)| RecordRef::GenesisTxn(*i))
            .collect()
    }

    // ----- facts -----------------------------------------------------------

    /// Community Pass applied a payment to this fee (now or ever, as far as
    /// the link remembers): its amount is read-only.
    fn payment_applied(&self) -> bool {
        let locked = self.case.link.is_some_and(|link| link.amount_locked);
        let paid = self
            .case
            .vendor_fees
            .iter()
            .any(|(_, fee)| fee.paid.is_positive());
        let payment_txn = self
            .case
            .vendor_txns
            .iter()
            .any(|(_, txn)| txn.kind == TxnKind::Payment);
        locked || paid || payment_txn
    }

    fn was_sent(&self) -> bool {
        let linked = self.case.link.is_some_and(|link| link.was_sent());
        linked || !self.case.vendor_fees.is_empty() || !self.case.vendor_txns.is_empty()
    }

    /// The deduplicated Community Pass transactions of this case whose id is
    /// delivered without conflict.
    fn settled_vendor_txns(&self) -> Vec<&'a VendorTxn> {
        let mut by_id: BTreeMap<&VendorTxnId, &'a VendorTxn> = BTreeMap::new();
        for (_, txn) in self.case.vendor_txns {
            if !self.is_conflicting(&txn.id) {
                by_id.entry(&txn.id).or_insert(txn);
            }
        }
        by_id.into_values().collect()
    }

    fn is_conflicting(&self, vendor_id: &VendorTxnId) -> bool {
        self.facts
            .vendor_deliveries
            .get(vendor_id)
            .is_some_and(|seen| seen.conflicting)
    }

    fn has_conflicting_vendor_txn(&self) -> bool {
        self.case
            .vendor_txns
            .iter()
            .any(|(_, txn)| self.is_conflicting(&txn.id))
    }

    // ----- fee level -------------------------------------------------------

    fn fee_level(&mut self) {
        if self.case.fee_id.is_none() {
            return; // unkeyed Community Pass transactions only
        }
        if self.case.genesis_fees.len() > 1 || self.case.vendor_fees.len() > 1 {
            self.duplicate_fee();
            return;
        }
        let vendor_consistent = self.vendor_fee_conservation();
        match (self.case.genesis_fee(), self.case.vendor_fee()) {
            (None, None) => self.genesis_txns_without_fee(),
            (None, Some(vendor)) => self.fee_gone_from_genesis(vendor),
            (Some(genesis), vendor) => match self.policy.eligibility(genesis) {
                Err(why) => self.ineligible(genesis, vendor, why.describe()),
                Ok(()) => match vendor {
                    None => self.fee_not_in_cp(genesis),
                    Some(vendor) if vendor_consistent => self.compare_fee(genesis, vendor),
                    Some(_) => {}
                },
            },
        }
    }

    fn duplicate_fee(&mut self) {
        let genesis_count = self.case.genesis_fees.len();
        let vendor_count = self.case.vendor_fees.len();
        let records = self.fee_records();
        let resolution = self.review(
            "the same Genesis fee id appears more than once on one side",
            "merge or delete the duplicate fee record",
        );
        self.flag(
            DiscrepancyKind::DuplicateFee,
            (
                Some(format!("{genesis_count} fees")),
                Some(format!("{vendor_count} fees")),
            ),
            None,
            resolution,
            &records,
        );
    }

    fn genesis_txns_without_fee(&mut self) {
        if self.case.genesis_txns.is_empty() {
            return;
        }
        let records = self.all_genesis_txn_records();
        let resolution = self.review(
            "transactions reference a fee that Genesis no longer has",
            "restore the fee or move the transactions to the right fee",
        );
        let count = records.len();
        self.flag(
            DiscrepancyKind::GenesisTxnWithoutFee,
            (Some(format!("{count} transactions")), None),
            None,
            resolution,
            &records,
        );
    }

    fn fee_gone_from_genesis(&mut self, vendor: &VendorFee) {
        let mut records = self.fee_records();
        records.extend(self.all_genesis_txn_records());
        let cp_value = Some(FeeValues::of_vendor(vendor).render());
        if self.payment_applied() {
            let resolution = self.review(
                "the fee was deleted in Genesis after Community Pass applied a payment",
                "decide whether to refund the family or restore the fee",
            );
            let kind = DiscrepancyKind::FeeDeletedAfterPayment;
            self.flag(kind, (None, cp_value), None, resolution, &records);
        } else if self.case.link.is_some() && self.no_money_moved(vendor) {
            if vendor.status == VendorFeeStatus::Void {
                self.mark(&records, Outcome::Matched); // deleted here, void there
                return;
            }
            let void = Resolution::Planned(Action::PushFee {
                fee_id: vendor.genesis_fee_id,
            });
            let kind = DiscrepancyKind::FeeDeletedInGenesis;
            self.flag(kind, (None, cp_value), None, void, &records);
        } else {
            let reason = if self.case.link.is_some() {
                "the fee was deleted in Genesis; Community Pass still shows it with money moved on it"
            } else {
                "Community Pass has a fee whose Genesis id does not exist"
            };
            let resolution = self.review(reason, "void the fee in Community Pass");
            let kind = DiscrepancyKind::CpFeeWithoutGenesisFee;
            self.flag(kind, (None, cp_value), None, resolution, &records);
        }
    }

    /// No money moved on the fee in Community Pass: nothing paid, waived,
    /// refunded or reversed, no transaction listed.
    fn no_money_moved(&self, vendor: &VendorFee) -> bool {
        !self.payment_applied()
            && self.case.vendor_txns.is_empty()
            && !vendor.waived.is_positive()
            && !vendor.refunded.is_positive()
            && !vendor.reversed.is_positive()
    }

    /// A fee the policy no longer sends (category deselected, cutoff moved,
    /// school excluded). Once sent it is frozen: never pushed again, its
    /// Community Pass payments still posted, and it needs a person only
    /// when the two sides disagree about it.
    fn ineligible(&mut self, genesis: &GenesisFee, vendor: Option<&VendorFee>, why: &str) {
        let records = self.fee_records();
        if !self.was_sent() {
            self.mark(&records, Outcome::Matched); // managed but rightly never sent
            return;
        }
        let credit = self.case.genesis_credit();
        let Some(vendor) = vendor else {
            let values = (Some(FeeValues::of_genesis(genesis, credit).render()), None);
            let reason = format!(
                "sent to Community Pass, which no longer lists it; it is not sent again: {why}"
            );
            let resolution = self.review(
                &reason,
                "ask Community Pass where the fee went, or include it in the policy again",
            );
            let kind = DiscrepancyKind::SentButIneligible;
            return self.flag(kind, values, None, resolution, &records);
        };
        let mut changed: Vec<String> = self
            .detail_differences(genesis, vendor)
            .iter()
            .map(|d| {
                format!(
                    "{} {} in Genesis, {} in Community Pass",
                    d.field, d.genesis, d.community_pass
                )
            })
            .collect();
        if genesis.amount != vendor.amount {
            changed.push(format!(
                "amount {} in Genesis, {} in Community Pass",
                genesis.amount, vendor.amount
            ));
        }
        if !status_agrees(genesis.status, vendor) {
            changed.push(format!(
                "status {} in Genesis, {} in Community Pass",
                genesis.status, vendor.status
            ));
        }
        if credit != vendor.genesis_credit {
            changed.push(format!(
                "office credit {} in Genesis, {} in Community Pass",
                credit, vendor.genesis_credit
            ));
        }
        if changed.is_empty() {
            self.mark(&records, Outcome::Matched); // frozen, and both sides agree
            return;
        }
        let values = (
            Some(FeeValues::of_genesis(genesis, credit).render()),
            Some(format!(
                "{}; paid {}",
                FeeValues::of_vendor(vendor).render(),
                vendor.paid - vendor.refunded - vendor.reversed
            )),
        );
        let reason = format!(
            "changed in Genesis after it stopped being sent ({why}), so the change is not sent: {}; Community Pass shows {} paid",
            changed.join("; "),
            vendor.paid - vendor.refunded - vendor.reversed
        );
        let resolution = self.review(
            &reason,
            "make the same change in Community Pass by hand, or include the fee in the policy again so it is sent",
        );
        self.flag(
            DiscrepancyKind::SentButIneligible,
            values,
            None,
            resolution,
            &records,
        );
    }

    fn fee_not_in_cp(&mut self, genesis: &GenesisFee) {
        let records = self.fee_records();
        let credit = self.case.genesis_credit();
        let genesis_value = Some(FeeValues::of_genesis(genesis, credit).render());
        if self.payment_applied() {
            let resolution = self.review(
                "Community Pass applied a payment to this fee but no longer lists it",
                "ask Community Pass where the fee and its payments went",
            );
            let kind = DiscrepancyKind::PaidFeeMissingInCp;
            self.flag(kind, (genesis_value, None), None, resolution, &records);
            return;
        }
        let sent = self.was_sent();
        if genesis.status != FeeStatus::Open && !sent {
            self.mark(&records, Outcome::Matched); // nothing for a parent to see
            return;
        }
        let push = Resolution::Planned(Action::PushFee { fee_id: genesis.id });
        self.flag(
            DiscrepancyKind::FeeMissingInCp,
            (genesis_value, None),
            None,
            push,
            &records,
        );
    }

    fn compare_fee(&mut self, genesis: &GenesisFee, vendor: &VendorFee) {
        let records = self.fee_records();
        let credit = self.case.genesis_credit();
        // Rendered only for a discrepancy: most fees match.
        let values = || {
            (
                Some(FeeValues::of_genesis(genesis, credit).render()),
                Some(FeeValues::of_vendor(vendor).render()),
            )
        };
        if self.payment_applied() && genesis.status == FeeStatus::Void {
            let resolution = self.review(
                "the fee was voided in Genesis after Community Pass applied a payment",
                "decide whether to refund the family; the void is not sent",
            );
            let kind = DiscrepancyKind::FeeVoidedAfterPayment;
            return self.flag(kind, values(), None, resolution, &records);
        }
        if self.payment_applied() && genesis.student_id != vendor.student_id {
            let resolution = self.review(
                "the fee was moved to another student in Genesis after Community Pass applied a \
                 payment; the money sits on the first family's account, so the move is not sent",
                "move the fee back in Genesis, or refund the first family and bill the second",
            );
            let kind = DiscrepancyKind::PaidFeeMovedToAnotherStudent;
            let values = (
                Some(format!("student {}", genesis.student_id)),
                Some(format!(
                    "student {}; paid {}",
                    vendor.student_id, vendor.paid
                )),
            );
            return self.flag(kind, values, None, resolution, &records);
        }
        if self.payment_applied() && genesis.amount != vendor.amount {
            let resolution = self.review(
                "the amount was edited in Genesis after Community Pass applied a payment; \
                 amounts are read-only once paid, so the edit is not sent",
                "restore the amount in Genesis, or issue a separate fee or credit",
            );
            let kind = DiscrepancyKind::AmountEditedAfterPayment;
            return self.flag(kind, values(), None, resolution, &records);
        }
        match self.fee_difference(genesis, vendor, credit) {
            None => self.mark(&records, Outcome::Matched),
            Some(kind) => {
                let details = self.detail_differences(genesis, vendor);
                let values = (
                    Some(FeeValues::of_genesis(genesis, credit).render_with(&side(&details, true))),
                    Some(FeeValues::of_vendor(vendor).render_with(&side(&details, false))),
                );
                let push = Resolution::Planned(Action::PushFee { fee_id: genesis.id });
                self.flag(kind, values, None, push, &records);
            }
        }
    }

    /// Whether every field other than money and status agrees; no
    /// allocation (most fees agree, and this runs for every fee).
    fn details_agree(&self, genesis: &GenesisFee, vendor: &VendorFee) -> bool {
        let plain = genesis.student_id == vendor.student_id
            && genesis.category == vendor.category
            && genesis.school == vendor.school
            && genesis.description == vendor.description
            && genesis.fee_date == vendor.fee_date
            && genesis.due_date == vendor.due_date;
        plain
            && self
                .facts
                .parties
                .get(&genesis.student_id)
                .is_none_or(|party| {
                    party.patron_id == vendor.patron_id
                        && same_guardians(&party.guardian_ids, &vendor.guardian_ids)
                })
    }

    /// The fields other than money and status that differ, in words:
    /// student, patron and guardians (when Genesis's party of the student
    /// is known), category, school, description, fee and due dates.
    fn detail_differences(&self, genesis: &GenesisFee, vendor: &VendorFee) -> Vec<FieldDifference> {
        if self.details_agree(genesis, vendor) {
            return Vec::new();
        }
        let mut differences = vec![
            FieldDifference::of(
                "student",
                genesis.student_id.to_string(),
                vendor.student_id.to_string(),
            ),
            FieldDifference::of(
                "category",
                genesis.category.clone(),
                vendor.category.clone(),
            ),
            FieldDifference::of("school", genesis.school.clone(), vendor.school.clone()),
            FieldDifference::of(
                "description",
                genesis.description.clone(),
                vendor.description.clone(),
            ),
            FieldDifference::of(
                "fee date",
                genesis.fee_date.to_string(),
                vendor.fee_date.to_string(),
            ),
            FieldDifference::of(
                "due date",
                show_date(genesis.due_date),
                show_date(vendor.due_date),
            ),
        ];
        if let Some(party) = self.facts.parties.get(&genesis.student_id) {
            differences.push(FieldDifference::of(
                "patron",
                party.patron_id.clone(),
                vendor.patron_id.clone(),
            ));
            let mut shown = vendor.guardian_ids.clone();
            shown.sort();
            shown.dedup();
            differences.push(FieldDifference::of(
                "guardians",
                show_guardians(&party.guardian_ids),
                show_guardians(&shown),
            ));
        }
        differences.into_iter().flatten().collect()
    }

    /// The kind of the most telling difference between the fee as Genesis
    /// holds it and as Community Pass shows it, if any.
    fn fee_difference(
        &self,
        genesis: &GenesisFee,
        vendor: &VendorFee,
        credit: Money,
    ) -> Option<DiscrepancyKind> {
        let status_differs = !status_agrees(genesis.status, vendor);
        if status_differs && genesis.status == FeeStatus::Void {
            return Some(DiscrepancyKind::FeeVoidedInGenesis);
        }
        if status_differs && genesis.status == FeeStatus::Waived {
            return Some(DiscrepancyKind::FeeWaivedInGenesis);
        }
        if status_differs || genesis.amount != vendor.amount {
            return Some(DiscrepancyKind::FeeOutOfDate);
        }
        if credit != vendor.genesis_credit {
            return if self.latest_manual_kind() == Some(TxnKind::Waiver) {
                Some(DiscrepancyKind::GenesisWaiverNotReflected)
            } else {
                Some(DiscrepancyKind::GenesisCreditNotReflected)
            };
        }
        if !self.details_agree(genesis, vendor) {
            return Some(DiscrepancyKind::FeeDetailsOutOfDate);
        }
        None
    }

    /// The kind of the most recent transaction recorded in Genesis itself:
    /// what most likely changed the credit since the last push.
    fn latest_manual_kind(&self) -> Option<TxnKind> {
        self.case
            .manual_txns()
            .max_by_key(|(_, txn)| (txn.posted_at, txn.id))
            .map(|(_, txn)| txn.kind)
    }

    /// Checks the Community Pass fee's own identity and its totals against
    /// its transactions; flags and returns `false` when broken.
    fn vendor_fee_conservation(&mut self) -> bool {
        let Some(vendor) = self.case.vendor_fee() else {
            return true;
        };
        let identity_balance = vendor_identity_balance(vendor);
        let mut problems = Vec::new();
        if identity_balance != vendor.balance {
            problems.push(format!(
                "balance {} but amount − credit − paid − waived + refunded + reversed = {}",
                vendor.balance, identity_balance
            ));
        }
        if !self.has_conflicting_vendor_txn() {
            let ledger = VendorLedger::of(&self.settled_vendor_txns());
            problems.extend(ledger.differences_from(vendor));
        }
        if problems.is_empty() {
            return true;
        }
        let records = self.fee_records();
        let resolution = self.review(
            "Community Pass's fee does not add up; nothing is pushed until it does",
            "ask Community Pass to correct the fee's totals",
        );
        let cp_value = Some(problems.join("; "));
        let kind = DiscrepancyKind::ConservationViolation;
        self.flag(kind, (None, cp_value), None, resolution, &records);
        false
    }

    // ----- transactions ----------------------------------------------------

    fn transactions(&mut self) {
        if self.case.fee_id.is_none() {
            // Transactions on fees that exist only in Community Pass (no
            // Genesis fee id): never synced, so not a Genesis discrepancy.
            let records: Vec<RecordRef> = self
                .case
                .vendor_txns
                .iter()
                .map(|(i, _)| RecordRef::VendorTxn(*i))
                .collect();
            self.mark(&records, Outcome::Matched);
            return;
        }
        for (vendor_id, postings) in self.postings_by_vendor_id() {
            let first_new = self.report.discrepancies.len();
            self.judge_vendor_id(vendor_id, &postings);
            if self.case.fee_id.is_none() {
                self.name_txn_student(first_new, &postings);
            }
        }
        self.malformed_genesis_txns();
    }

    /// Transactions naming no known fee each carry their own student.
    fn name_txn_student(&mut self, first_new: usize, postings: &Postings<'a>) {
        let student = postings.vendor.first().and_then(|(_, txn)| txn.student_id);
        for discrepancy in &mut self.report.discrepancies[first_new..] {
            discrepancy.student_id = student;
        }
    }

    /// This case's records of each vendor transaction id, on both sides.
    fn postings_by_vendor_id(&self) -> BTreeMap<&'a VendorTxnId, Postings<'a>> {
        let mut by_id: BTreeMap<&'a VendorTxnId, Postings<'a>> = BTreeMap::new();
        for (index, txn) in self.case.genesis_txns {
            if let Some(vendor_id) = &txn.vendor_txn_id {
                by_id
                    .entry(vendor_id)
                    .or_default()
                    .genesis
                    .push((*index, *txn));
            }
        }
        for (index, txn) in self.case.vendor_txns {
            by_id
                .entry(&txn.id)
                .or_default()
                .vendor
                .push((*index, *txn));
        }
        by_id
    }

    fn judge_vendor_id(&mut self, vendor_id: &VendorTxnId, postings: &Postings<'a>) {
        let deliveries = self.facts.vendor_deliveries.get(vendor_id);
        let posted_count = self.facts.genesis_posting_count(vendor_id);
        let id = || Some(vendor_id.clone());
        if deliveries.is_some_and(|seen| seen.conflicting) {
            let resolution = self.review(
                "Community Pass delivered this transaction more than once with different contents",
                "confirm the true transaction with Community Pass, then post it by hand",
            );
            let values = (None, Some(postings.render_vendor()));
            return self.flag(
                DiscrepancyKind::DuplicateTxnCp,
                values,
                id(),
                resolution,
                &postings.records(),
            );
        }
        if posted_count > 1 {
            let resolution = self.review(
                "the same vendor transaction is posted more than once in Genesis",
                "delete the extra Genesis postings",
            );
            let values = (Some(format!("posted {posted_count} times")), None);
            return self.flag(
                DiscrepancyKind::DuplicateTxnGenesis,
                values,
                id(),
                resolution,
                &postings.records(),
            );
        }
        let Some(deliveries) = deliveries else {
            return self.unknown_to_cp(postings, id(), &postings.records());
        };
        match (postings.genesis.first(), postings.vendor.first()) {
            (Some((_, genesis)), Some(_)) => self.compare_txn(genesis, deliveries.first, postings),
            (Some(_), None) => self.fee_mismatch(id(), deliveries.first, &postings.records()),
            (None, Some(_)) if posted_count == 1 => {
                self.fee_mismatch(id(), deliveries.first, &postings.records())
            }
            (None, Some((_, vendor))) => self.vendor_txn_missing(vendor, postings),
            (None, None) => {}
        }
    }

    fn unknown_to_cp(
        &mut self,
        postings: &Postings<'a>,
        id: Option<VendorTxnId>,
        records: &[RecordRef],
    ) {
        let values = (Some(postings.render_genesis()), None);
        let resolution = self.review(
            "Genesis holds a transaction with a vendor id Community Pass does not know",
            "check the transaction with Community Pass; delete it in Genesis if it is not real",
        );
        self.flag(
            DiscrepancyKind::GenesisTxnUnknownToCp,
            values,
            id,
            resolution,
            records,
        );
    }

    fn fee_mismatch(&mut self, id: Option<VendorTxnId>, vendor: &VendorTxn, records: &[RecordRef]) {
        let posted_on = self.facts.genesis_postings.get(&vendor.id).map(|fees| {
            fees.fee_ids()
                .map(|fee| fee.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        });
        let genesis_value = posted_on.map(|fees| format!("posted to fee {fees}"));
        let cp_value = Some(format!(
            "for fee {}",
            vendor
                .genesis_fee_id
                .map_or_else(|| vendor.vendor_fee_id.clone(), |id| id.to_string())
        ));
        let resolution = self.review(
            "the transaction is posted in Genesis to a different fee than Community Pass applied it to",
            "move the Genesis posting to the right fee",
        );
        self.flag(
            DiscrepancyKind::TxnFeeMismatch,
            (genesis_value, cp_value),
            id,
            resolution,
            records,
        );
    }

    fn compare_txn(&mut self, genesis: &GenesisTxn, vendor: &VendorTxn, postings: &Postings<'a>) {
        let records = postings.records();
        if genesis.kind == vendor.kind && genesis.amount == vendor.amount {
            return self.mark(&records, Outcome::Matched);
        }
        let values = (
            Some(format!("{} {}", genesis.kind, genesis.amount)),
            Some(format!("{} {}", vendor.kind, vendor.amount)),
        );
        let resolution = self.review(
            "Genesis posted this vendor transaction with a different amount or kind",
            "correct the Genesis posting to match Community Pass",
        );
        let id = Some(vendor.id.clone());
        self.flag(
            DiscrepancyKind::TxnAmountMismatch,
            values,
            id,
            resolution,
            &records,
        );
    }

    fn vendor_txn_missing(&mut self, vendor: &VendorTxn, postings: &Postings<'a>) {
        let (first, redeliveries) = postings.vendor.split_first().expect("caller checked");
        let id = Some(vendor.id.clone());
        let cp_value = Some(format!("{} {}", vendor.kind, vendor.amount));
        let Some(genesis_fee) = self.case.genesis_fees.first().map(|(_, fee)| *fee) else {
            let resolution = self.review(
                "fee not found in Genesis",
                "find the fee the family meant to pay and post the transaction by hand",
            );
            let kind = DiscrepancyKind::UnprocessedVendorTxn;
            return self.flag(kind, (None, cp_value), id, resolution, &postings.records());
        };
        let kind = missing_kind(vendor, genesis_fee);
        let post = Resolution::Planned(Action::PostVendorTxn {
            fee_id: genesis_fee.id,
            txn: vendor.clone(),
        });
        self.flag(
            kind,
            (None, cp_value),
            id,
            post,
            &[RecordRef::VendorTxn(first.0)],
        );
        let redelivered: Vec<RecordRef> = redeliveries
            .iter()
            .map(|(i, _)| RecordRef::VendorTxn(*i))
            .collect();
        self.mark(&redelivered, Outcome::Matched);
    }

    /// Genesis transactions that claim to come from Community Pass but carry
    /// no vendor id cannot be matched.
    fn malformed_genesis_txns(&mut self) {
        let malformed: Vec<(usize, &GenesisTxn)> = self
            .case
            .genesis_txns
            .iter()
            .filter(|(_, txn)| txn.vendor_txn_id.is_none() && !is_manual(txn))
            .map(|(i, txn)| (*i, *txn))
            .collect();
        for (index, txn) in malformed {
            let resolution = self.review(
                "Genesis holds a Community Pass transaction without a vendor id",
                "add the vendor id or delete the posting",
            );
            let values = (Some(format!("{} {}", txn.kind, txn.amount)), None);
            let kind = DiscrepancyKind::GenesisTxnUnknownToCp;
            self.flag(
                kind,
                values,
                None,
                resolution,
                &[RecordRef::GenesisTxn(index)],
            );
        }
    }

    // ----- locks and credits ----------------------------------------------

    fn amount_lock(&mut self) {
        let Some(fee_id) = self.case.fee_id else {
            return;
        };
        if self.case.genesis_fees.is_empty() || !self.payment_applied() {
            return;
        }
        if self.case.link.is_some_and(|link| link.amount_locked) {
            return;
        }
        let records: Vec<RecordRef> = self
            .case
            .genesis_fees
            .iter()
            .map(|(i, _)| RecordRef::GenesisFee(*i))
            .collect();
        let lock = Resolution::Planned(Action::LockAmount { fee_id });
        let values = (
            Some("amount editable".to_string()),
            Some("payment applied".to_string()),
        );
        self.flag(
            DiscrepancyKind::AmountNotLocked,
            values,
            None,
            lock,
            &records,
        );
    }

    /// The balance both sides will show once every settled Community Pass
    /// transaction is in Genesis and Genesis's credit is in Community Pass.
    fn projected_balance(&self) -> Option<Money> {
        if let Some(genesis) = self.case.genesis_fee() {
            let vendor_effect: Money = self
                .settled_vendor_txns()
                .iter()
                .map(|txn| txn.kind.balance_effect(txn.amount))
                .sum();
            return Some(genesis.amount - self.case.genesis_credit() + vendor_effect);
        }
        self.case.vendor_fee().map(|fee| fee.balance)
    }

    fn overpayment(&mut self) {
        if self.case.fee_id.is_none()
            || self.case.genesis_fees.len() > 1
            || self.case.vendor_fees.len() > 1
        {
            return;
        }
        let Some(balance) = self.projected_balance() else {
            return;
        };
        if !balance.is_negative() {
            return;
        }
        let records = self.fee_records();
        let resolution = self.review(
            "the fee is overpaid; the family holds a credit that must not be lost",
            "refund the credit or apply it to another fee",
        );
        let values = (
            Some(format!("credit {}", -balance)),
            self.case
                .vendor_fee()
                .map(|fee| format!("balance {}", fee.balance)),
        );
        self.flag(
            DiscrepancyKind::OverpaymentCredit,
            values,
            None,
            resolution,
            &records,
        );
    }
}

/// One vendor id's records within a case.
#[derive(Debug, Default)]
struct Postings<'a> {
    genesis: Vec<(usize, &'a GenesisTxn)>,
    vendor: Vec<(usize, &'a VendorTxn)>,
}

impl Postings<'_> {
    fn records(&self) -> Vec<RecordRef> {
        let genesis = self.genesis.iter().map(|(i, _)| RecordRef::GenesisTxn(*i));
        let vendor = self.vendor.iter().map(|(i, _)| RecordRef::VendorTxn(*i));
        genesis.chain(vendor).collect()
    }

    fn render_genesis(&self) -> String {
        let parts: Vec<String> = self
            .genesis
            .iter()
            .map(|(_, txn)| format!("{} {}", txn.kind, txn.amount))
            .collect();
        parts.join(", ")
    }

    fn render_vendor(&self) -> String {
        let parts: Vec<String> = self
            .vendor
            .iter()
            .map(|(_, txn)| format!("{} {}", txn.kind, txn.amount))
            .collect();
        parts.join(", ")
    }
}

/// The kind of a Community Pass transaction missing in Genesis.
fn missing_kind(vendor: &VendorTxn, genesis_fee: &GenesisFee) -> DiscrepancyKind {
    match vendor.kind {
        TxnKind::Payment if vendor.amount < genesis_fee.amount => {
            DiscrepancyKind::CpPartialPaymentMissingInGenesis
        }
        TxnKind::Payment => DiscrepancyKind::CpPaymentMissingInGenesis,
        TxnKind::Refund => DiscrepancyKind::CpRefundMissingInGenesis,
        TxnKind::Waiver => DiscrepancyKind::CpWaiverMissingInGenesis,
        TxnKind::Reversal => DiscrepancyKind::CpReversalMissingInGenesis,
    }
}

/// Each side's words for a list of field differences.
fn side(differences: &[FieldDifference], genesis: bool) -> Vec<String> {
    differences
        .iter()
        .map(|d| {
            let value = if genesis {
                &d.genesis
            } else {
                &d.community_pass
            };
            format!("{} {}", d.field, value)
        })
        .collect()
}

/// Whether Community Pass shows the status Genesis has. Community Pass
/// derives `paid` itself, and shows `waived` after its own waiver.
fn status_agrees(genesis: FeeStatus, vendor: &VendorFee) -> bool {
    match genesis {
        FeeStatus::Open => match vendor.status {
            VendorFeeStatus::Open | VendorFeeStatus::Paid => true,
            VendorFeeStatus::Waived => vendor.waived.is_positive(),
            VendorFeeStatus::Void => false,
        },
        FeeStatus::Waived => vendor.status == VendorFeeStatus::Waived,
        FeeStatus::Void => vendor.status == VendorFeeStatus::Void,
    }
}

/// The balance Community Pass's documented invariant gives for a fee.
pub fn vendor_identity_balance(fee: &VendorFee) -> Money {
    fee.amount - fee.genesis_credit - fee.paid - fee.waived + fee.refunded + fee.reversed
}

/// Sums of Community Pass transactions by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VendorLedger {
    pub paid: Money,
    pub refunded: Money,
    pub waived: Money,
    pub reversed: Money,
}

impl VendorLedger {
    pub fn of(txns: &[&VendorTxn]) -> VendorLedger {
        let mut ledger = VendorLedger::default();
        for txn in txns {
            ledger.add(txn.kind, txn.amount);
        }
        ledger
    }

    pub fn add(&mut self, kind: TxnKind, amount: Money) {
        match kind {
            TxnKind::Payment => self.paid += amount,
            TxnKind::Refund => self.refunded += amount,
            TxnKind::Waiver => self.waived += amount,
            TxnKind::Reversal => self.reversed += amount,
        }
    }

    fn differences_from(&self, fee: &VendorFee) -> Vec<String> {
        let pairs = [
            ("paid", fee.paid, self.paid),
            ("refunded", fee.refunded, self.refunded),
            ("waived", fee.waived, self.waived),
            ("reversed", fee.reversed, self.reversed),
        ];
        pairs
            .iter()
            .filter(|(_, shown, summed)| shown != summed)
            .map(|(name, shown, summed)| {
                format!("{name} {shown} but its transactions sum to {summed}")
            })
            .collect()
    }
}
