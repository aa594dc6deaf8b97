//! One district's Community Pass data, in memory and without IO: integration
//! fees keyed by Genesis fee id, unmanaged fees, the append-only transaction
//! log (its index is the monotonic cursor), patron totals, and the
//! idempotency store. Every change to a fee goes through `change_fee`, which
//! re-derives the balance, the status and the patron totals, so the identity
//! `balance = amount − genesis_credit − paid − waived + refunded + reversed`
//! holds for every fee at all times.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use chrono::{Duration as Days, NaiveDateTime};
use serde::{Deserialize, Serialize};

use super::model::{ActionOutcome, DistrictSummary, FeeRef, LoadReport, ParentAction};
use crate::domain::{
    FeeId, FeePush, FeeStatus, GuardianId, PatronBalance, StudentId, TxnKind, UnmanagedFee,
    VendorFee, VendorFeeStatus, VendorTxn, VendorTxnId,
};
use crate::money::Money;
use crate::portal::UpsertOutcome;

/// Field bounds of a fee push, as documented in the OpenAPI document.
pub const PATRON_ID_CHARS_MAX: usize = 64;
pub const CATEGORY_CHARS_MAX: usize = 32;
pub const SCHOOL_CHARS_MAX: usize = 64;
pub const DESCRIPTION_CHARS_MAX: usize = 200;
pub const METHOD_CHARS_MAX: usize = 32;
pub const GUARDIANS_MAX: usize = 20;
/// The largest id accepted on the wire (fee, student, guardian).
pub const ID_MAX: i64 = 999_999_999_999;
/// How many days after its payment a reversal may be dated at most.
pub const REVERSAL_DAYS_MAX: u32 = 365;
/// The default delay of a returned e-check.
pub const REVERSAL_DAYS_DEFAULT: u32 = 5;

/// A refusal of the API, turned into a JSON error by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(422, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(404, code, message)
    }
}

/// An integration fee and what only the simulator needs to know about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagedFee {
    pub fee: VendorFee,
    pub push_status: FeeStatus,
}

/// Which fee a vendor fee id or a payment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum FeeKey {
    Managed(FeeId),
    Unmanaged(u64),
}

/// How much of a payment is still not refunded or reversed.
#[derive(Debug, Clone, Copy)]
struct PaymentLedger {
    fee: FeeKey,
    amount: Money,
    undone: Money,
    occurred_at: NaiveDateTime,
}

#[derive(Debug, Clone, Copy, Default)]
struct PatronTotals {
    integration: Money,
    other: Money,
}

/// A stored answer of an idempotent call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotentReply {
    pub request_digest: String,
    pub status: u16,
    pub body: String,
}

/// The persisted form of a district; indexes are rebuilt on load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DistrictSnapshot {
    fees: Vec<ManagedFee>,
    unmanaged: Vec<(u64, UnmanagedFee)>,
    transactions: Vec<VendorTxn>,
    idempotency: Vec<(String, IdempotentReply)>,
    next_vendor_number: u64,
}

/// One district's Community Pass.
#[derive(Debug, Default)]
pub struct District {
    fees: BTreeMap<FeeId, ManagedFee>,
    fees_by_student: BTreeSet<(StudentId, FeeId)>,
    vendor_ids: HashMap<String, FeeKey>,
    unmanaged: BTreeMap<u64, UnmanagedFee>,
    transactions: Vec<VendorTxn>,
    transactions_by_student: HashMap<StudentId, Vec<i64>>,
    transactions_by_fee: HashMap<FeeId, Vec<i64>>,
    /// Which students each guardian is linked to, and through how many
    /// fees: exactly the links of the fees as last pushed.
    guardian_students: HashMap<GuardianId, BTreeMap<StudentId, u32>>,
    payments: HashMap<VendorTxnId, PaymentLedger>,
    patrons: BTreeMap<String, PatronTotals>,
    idempotency: HashMap<String, IdempotentReply>,
    next_vendor_number: u64,
    /// Injected: the `next_after` the last page of a listing names.
    cursor_jump: Option<i64>,
    /// Injected: fees served with a field replaced by raw JSON text.
    corrupt_fees: BTreeMap<FeeId, (String, String)>,
    /// Injected: patron balances served with a field replaced by raw JSON text.
    corrupt_balances: BTreeMap<String, (String, String)>,
    /// The time of the action being applied: nothing is dated after the
    /// moment it is recorded (a reversal "days later" that would fall in
    /// the future is dated now), as a real vendor's log is.
    recording_at: Option<NaiveDateTime>,
}

/// The page of the transaction log a query selected.
pub struct TxnSelection<'a> {
    pub items: Vec<&'a VendorTxn>,
    pub next_after: i64,
    pub has_more: bool,
}

/// Which integration fees a listing selects (the filters combine).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeeQuery {
    pub student: Option<StudentId>,
    /// Only these fees (sorted, without repeats).
    pub ids: Option<Vec<FeeId>>,
    /// Only fees whose record changed at or after this server time.
    pub updated_since: Option<NaiveDateTime>,
}

impl FeeQuery {
    fn selects(&self, fee: &VendorFee) -> bool {
        self.student.is_none_or(|student| fee.student_id == student)
            && self
                .updated_since
                .is_none_or(|since| fee.updated_at >= since)
    }
}

/// Whose transactions a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Student(StudentId),
    Guardian(GuardianId),
    /// The student's, if that guardian is linked to the student; else none.
    StudentOfGuardian(StudentId, GuardianId),
}

/// `balance = amount − genesis_credit − paid − waived + refunded + reversed`.
pub fn balance_of(fee: &VendorFee) -> Money {
    fee.amount - fee.genesis_credit - fee.paid - fee.waived + fee.refunded + fee.reversed
}

/// The status a parent sees: Genesis's void and waived win; otherwise open
/// while something is owed, then paid (or waived when only waivers cleared it).
fn vendor_status(fee: &VendorFee, pushed: FeeStatus) -> VendorFeeStatus {
    match pushed {
        FeeStatus::Void => VendorFeeStatus::Void,
        FeeStatus::Waived => VendorFeeStatus::Waived,
        FeeStatus::Open if fee.balance.is_positive() => VendorFeeStatus::Open,
        FeeStatus::Open => {
            let net_paid = fee.paid - fee.refunded - fee.reversed;
            let only_waived = fee.waived.is_positive()
                && !net_paid.is_positive()
                && !fee.genesis_credit.is_positive();
            if only_waived {
                VendorFeeStatus::Waived
            } else {
                VendorFeeStatus::Paid
            }
        }
    }
}

/// What a fee adds to its patron's balance: nothing once void, and nothing
/// once Genesis waived it (a waived fee owes nothing, with or without a
/// waiver transaction).
fn patron_share(managed: &ManagedFee) -> Money {
    match managed.push_status {
        FeeStatus::Void | FeeStatus::Waived => Money::ZERO,
        FeeStatus::Open if managed.fee.status == VendorFeeStatus::Void => Money::ZERO,
        FeeStatus::Open => managed.fee.balance,
    }
}

fn unmanaged_share(fee: &UnmanagedFee) -> Money {
    if fee.status == VendorFeeStatus::Void {
        Money::ZERO
    } else {
        fee.balance
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if chars == 0 || chars > max {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must be 1 to {max} characters"),
        ));
    }
    Ok(())
}

fn check_id(field: &str, value: i64) -> Result<(), ApiError> {
    if !(1..=ID_MAX).contains(&value) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("{field} must be between 1 and {ID_MAX}"),
        ));
    }
    Ok(())
}

fn check_not_negative(field: &str, value: Money) -> Result<(), ApiError> {
    if value.is_negative() {
        return Err(ApiError::unprocessable(
            "invalid_amount",
            format!("{field} must not be negative"),
        ));
    }
    Ok(())
}

/// Checks a fee push against the bounds the API document states, and the
/// rule it states in words (a Genesis refund never larger than the fee).
pub fn validate_push(push: &FeePush) -> Result<(), ApiError> {
    validate_push_fields(push)?;
    if push.genesis_credit.is_negative() && -push.genesis_credit > push.amount {
        return Err(ApiError::unprocessable(
            "invalid_amount",
            format!(
                "genesis_credit {} is a Genesis refund larger than the fee's amount {}",
                push.genesis_credit, push.amount
            ),
        ));
    }
    Ok(())
}

/// Checks each field of a fee push against the bounds the API document's
/// schema states (what a schema validator would refuse).
pub fn validate_push_fields(push: &FeePush) -> Result<(), ApiError> {
    check_id("genesis_fee_id", push.genesis_fee_id.0)?;
    check_id("student_id", push.student_id.0)?;
    check_text("patron_id", &push.patron_id, PATRON_ID_CHARS_MAX)?;
    check_text("category", &push.category, CATEGORY_CHARS_MAX)?;
    check_text("school", &push.school, SCHOOL_CHARS_MAX)?;
    check_text("description", &push.description, DESCRIPTION_CHARS_MAX)?;
    if push.guardian_ids.len() > GUARDIANS_MAX {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("at most {GUARDIANS_MAX} guardian_ids"),
        ));
    }
    for guardian in &push.guardian_ids {
        check_id("guardian_ids[]", guardian.0)?;
    }
    check_not_negative("amount", push.amount)
}

fn positive(field: &str, amount: Money) -> Result<Money, ApiError> {
    if amount.is_positive() {
        Ok(amount)
    } else {
        Err(ApiError::unprocessable(
            "invalid_amount",
            format!("{field} must be positive"),
        ))
    }
}

impl District {
    pub fn fee_count(&self) -> usize {
        self.fees.len()
    }

    pub fn transaction_count(&self) -> usize {
        self.transactions.len()
    }

    pub fn fee(&self, id: FeeId) -> Option<&VendorFee> {
        self.fees.get(&id).map(|managed| &managed.fee)
    }

    pub fn idempotent_reply(&self, key: &str) -> Option<&IdempotentReply> {
        self.idempotency.get(key)
    }

    pub fn remember_reply(&mut self, key: String, reply: IdempotentReply) {
        self.idempotency.insert(key, reply);
    }

    fn next_vendor_number(&mut self) -> u64 {
        self.next_vendor_number += 1;
        self.next_vendor_number
    }

    /// Creates or updates an integration fee from a Genesis push. The
    /// amount is read-only once a payment was applied (409 `amount_locked`).
    pub fn upsert(&mut self, push: FeePush, now: NaiveDateTime) -> Result<UpsertOutcome, ApiError> {
        validate_push(&push)?;
        let id = push.genesis_fee_id;
        let created = !self.fees.contains_key(&id);
        if created {
            self.insert_fee(&push, now);
        } else {
            self.update_fee(&push, now)?;
        }
        let fee = &self.fees[&id].fee;
        Ok(UpsertOutcome {
            genesis_fee_id: id,
            vendor_fee_id: fee.vendor_fee_id.clone(),
            created,
            amount: fee.amount,
            balance: fee.balance,
            status: fee.status,
            revision: fee.revision,
            replayed: false,
        })
    }

    /// The answer an upsert would get, without changing anything (the
    /// lost-write fault): validated like a real one, then dropped.
    pub fn upsert_lost(&self, push: &FeePush) -> Result<UpsertOutcome, ApiError> {
        validate_push(push)?;
        let id = push.genesis_fee_id;
        let existing = self.fees.get(&id).map(|managed| &managed.fee);
        let balance = push.amount - push.genesis_credit;
        Ok(UpsertOutcome {
            genesis_fee_id: id,
            vendor_fee_id: existing.map_or_else(
                || format!("CPF{:010}", self.next_vendor_number + 1),
                |fee| fee.vendor_fee_id.clone(),
            ),
            created: existing.is_none(),
            amount: push.amount,
            balance,
            status: match push.status {
                FeeStatus::Void => VendorFeeStatus::Void,
                FeeStatus::Waived => VendorFeeStatus::Waived,
                FeeStatus::Open if balance.is_positive() => VendorFeeStatus::Open,
                FeeStatus::Open => VendorFeeStatus::Paid,
            },
            revision: existing.map_or(1, |fee| fee.revision + 1),
            replayed: false,
        })
    }

    fn insert_fee(&mut self, push: &FeePush, now: NaiveDateTime) {
        let number = self.next_vendor_number();
        let fee = VendorFee {
            genesis_fee_id: push.genesis_fee_id,
            vendor_fee_id: format!("CPF{number:010}"),
            student_id: push.student_id,
            patron_id: push.patron_id.clone(),
            category: push.category.clone(),
            school: push.school.clone(),
            description: push.description.clone(),
            amount: push.amount,
            genesis_credit: push.genesis_credit,
            paid: Money::ZERO,
            refunded: Money::ZERO,
            waived: Money::ZERO,
            reversed: Money::ZERO,
            balance: Money::ZERO,
            status: VendorFeeStatus::Open,
            fee_date: push.fee_date,
            due_date: push.due_date,
            updated_at: now,
            guardian_ids: push.guardian_ids.clone(),
            revision: 0,
        };
        self.link_guardians(&fee, 1);
        self.vendor_ids.insert(
            fee.vendor_fee_id.clone(),
            FeeKey::Managed(fee.genesis_fee_id),
        );
        self.fees_by_student
            .insert((fee.student_id, fee.genesis_fee_id));
        let managed = ManagedFee {
            fee,
            push_status: push.status,
        };
        self.fees.insert(push.genesis_fee_id, managed);
        self.change_fee(push.genesis_fee_id, |managed| managed.fee.revision = 1);
    }

    fn update_fee(&mut self, push: &FeePush, now: NaiveDateTime) -> Result<(), ApiError> {
        let id = push.genesis_fee_id;
        let old = self.fees[&id].fee.clone();
        if old.paid.is_positive() && old.amount != push.amount {
            return Err(ApiError::new(
                409,
                "amount_locked",
                format!(
                    "fee {id} has payments applied; its amount {} cannot change",
                    old.amount
                ),
            ));
        }
        if old.student_id != push.student_id {
            self.fees_by_student.remove(&(old.student_id, id));
            self.fees_by_student.insert((push.student_id, id));
        }
        self.move_patron_share(&old, &push.patron_id);
        self.link_guardians(&old, -1);
        self.change_fee(id, |managed| {
            let fee = &mut managed.fee;
            fee.student_id = push.student_id;
            fee.patron_id = push.patron_id.clone();
            fee.category = push.category.clone();
            fee.school = push.school.clone();
            fee.description = push.description.clone();
            fee.amount = push.amount;
            fee.genesis_credit = push.genesis_credit;
            fee.fee_date = push.fee_date;
            fee.due_date = push.due_date;
            fee.guardian_ids = push.guardian_ids.clone();
            managed.push_status = push.status;
        });
        let managed = self.fees.get_mut(&id).expect("fee exists");
        if managed.fee.revision != old.revision {
            managed.fee.updated_at = now;
        }
        let fee = managed.fee.clone();
        self.link_guardians(&fee, 1);
        Ok(())
    }

    /// Adds (`delta` 1) or removes (-1) the guardian links one fee carries.
    fn link_guardians(&mut self, fee: &VendorFee, delta: i32) {
        for guardian in &fee.guardian_ids {
            let students = self.guardian_students.entry(*guardian).or_default();
            let count = students.entry(fee.student_id).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                students.remove(&fee.student_id);
            }
            if students.is_empty() {
                self.guardian_students.remove(guardian);
            }
        }
    }

    fn guardian_linked(&self, guardian: GuardianId, student: StudentId) -> bool {
        self.guardian_students
            .get(&guardian)
            .is_some_and(|students| students.contains_key(&student))
    }

    /// Moves a fee's patron share to a new patron before its fields change.
    fn move_patron_share(&mut self, old: &VendorFee, new_patron: &str) {
        if old.patron_id == new_patron {
            return;
        }
        let share = patron_share(&self.fees[&old.genesis_fee_id]);
        self.patrons
            .entry(old.patron_id.clone())
            .or_default()
            .integration -= share;
        self.patrons
            .entry(new_patron.to_string())
            .or_default()
            .integration += share;
    }

    /// The one way an integration fee changes: applies `edit`, re-derives
    /// balance and status, moves the difference into the patron total, and
    /// counts a new revision when anything changed.
    fn change_fee(&mut self, id: FeeId, edit: impl FnOnce(&mut ManagedFee)) {
        let managed = self
            .fees
            .get_mut(&id)
            .expect("caller checked the fee exists");
        let before = patron_share(managed);
        let (old_fee, old_status) = (managed.fee.clone(), managed.push_status);
        edit(managed);
        managed.fee.balance = balance_of(&managed.fee);
        managed.fee.status = vendor_status(&managed.fee, managed.push_status);
        if managed.fee != old_fee || managed.push_status != old_status {
            managed.fee.revision = old_fee.revision + 1;
        }
        let after = patron_share(managed);
        let patron = managed.fee.patron_id.clone();
        self.patrons.entry(patron).or_default().integration += after - before;
    }

    fn change_unmanaged(&mut self, number: u64, delta: Money, kind: TxnKind) {
        let fee = self.unmanaged.get_mut(&number).expect("caller checked");
        let before = unmanaged_share(fee);
        fee.balance += delta;
        if fee.status != VendorFeeStatus::Void {
            fee.status = match (fee.balance.is_positive(), kind) {
                (true, _) => VendorFeeStatus::Open,
                (false, TxnKind::Waiver) => VendorFeeStatus::Waived,
                (false, _) => VendorFeeStatus::Paid,
            };
        }
        let after = unmanaged_share(fee);
        let patron = fee.patron_id.clone();
        self.patrons.entry(patron).or_default().other += after - before;
    }

    /// Loads many pushes at once (admin bulk load), as if each was upserted.
    pub fn load(
        &mut self,
        pushes: Vec<FeePush>,
        now: NaiveDateTime,
    ) -> Result<LoadReport, ApiError> {
        let mut report = LoadReport {
            created: 0,
            updated: 0,
        };
        for (index, push) in pushes.into_iter().enumerate() {
            let outcome = self.upsert(push, now).map_err(|e| ApiError {
                message: format!("fee #{index}: {}", e.message),
                ..e
            })?;
            if outcome.created {
                report.created += 1;
            } else {
                report.updated += 1;
            }
        }
        Ok(report)
    }

    fn resolve(&self, fee: &FeeRef) -> Result<FeeKey, ApiError> {
        let key = match fee {
            FeeRef::Genesis(id) => self.fees.contains_key(id).then_some(FeeKey::Managed(*id)),
            FeeRef::Vendor(vendor_id) => self.vendor_ids.get(vendor_id).copied(),
        };
        key.ok_or_else(|| ApiError::not_found("fee_not_found", format!("no fee {fee:?}")))
    }

    /// What is owed on a fee, and whether it is void.
    fn owed(&self, key: FeeKey) -> (Money, bool) {
        match key {
            FeeKey::Managed(id) => {
                let fee = &self.fees[&id].fee;
                (fee.balance, fee.status == VendorFeeStatus::Void)
            }
            FeeKey::Unmanaged(number) => {
                let fee = &self.unmanaged[&number];
                (fee.balance, fee.status == VendorFeeStatus::Void)
            }
        }
    }

    /// Applies one parent-side action.
    pub fn apply(
        &mut self,
        action: ParentAction,
        now: NaiveDateTime,
    ) -> Result<ActionOutcome, ApiError> {
        self.recording_at = Some(now);
        match action {
            ParentAction::Payment {
                fee,
                amount,
                method,
                occurred_at,
            } => {
                let method = method.unwrap_or_else(|| "card".to_string());
                check_text("method", &method, METHOD_CHARS_MAX)?;
                let at = occurred_at.unwrap_or(now);
                self.charge(&fee, TxnKind::Payment, amount, &method, at)
            }
            ParentAction::Waiver {
                fee,
                amount,
                occurred_at,
            } => self.charge(
                &fee,
                TxnKind::Waiver,
                amount,
                "waiver",
                occurred_at.unwrap_or(now),
            ),
            ParentAction::Refund {
                payment_id,
                amount,
                occurred_at,
            } => self.undo(
                &payment_id,
                TxnKind::Refund,
                amount,
                occurred_at.unwrap_or(now),
            ),
            ParentAction::Reversal {
                payment_id,
                days_later,
            } => self.reverse(&payment_id, days_later.unwrap_or(REVERSAL_DAYS_DEFAULT)),
            ParentAction::UnmanagedFee {
                patron_id,
                student_id,
                description,
                amount,
                created_at,
            } => self.add_unmanaged(
                patron_id,
                student_id,
                description,
                amount,
                created_at.unwrap_or(now),
            ),
            ParentAction::DuplicateFee { genesis_fee_id } => self.duplicate(genesis_fee_id, now),
            ParentAction::InjectTransaction {
                id,
                genesis_fee_id,
                vendor_fee_id,
                student_id,
                kind,
                amount,
                occurred_at,
                reverses,
            } => {
                let managed = self.fees.get(&genesis_fee_id).map(|m| &m.fee);
                let sequence = self.transactions.len() as i64 + 1;
                let txn = VendorTxn {
                    id: id.unwrap_or_else(|| VendorTxnId(format!("TXN{sequence:010}"))),
                    sequence,
                    genesis_fee_id: Some(genesis_fee_id),
                    vendor_fee_id: vendor_fee_id
                        .or_else(|| managed.map(|f| f.vendor_fee_id.clone()))
                        .unwrap_or_else(|| format!("CPF-UNKNOWN-{genesis_fee_id}")),
                    student_id: student_id.or_else(|| managed.map(|f| f.student_id)),
                    kind,
                    amount,
                    method: "injected".to_string(),
                    occurred_at: occurred_at.unwrap_or(now),
                    reverses,
                };
                Ok(ActionOutcome::Transaction(self.inject(txn)))
            }
            ParentAction::CursorJump { next_after } => {
                self.cursor_jump = next_after;
                Ok(ActionOutcome::FaultSet)
            }
            ParentAction::CorruptFee {
                genesis_fee_id,
                field,
                raw,
            } => {
                match raw {
                    Some(raw) => self.corrupt_fees.insert(genesis_fee_id, (field, raw)),
                    None => self.corrupt_fees.remove(&genesis_fee_id),
                };
                Ok(ActionOutcome::FaultSet)
            }
            ParentAction::CorruptBalance {
                patron_id,
                field,
                raw,
            } => {
                match raw {
                    Some(raw) => self.corrupt_balances.insert(patron_id, (field, raw)),
                    None => self.corrupt_balances.remove(&patron_id),
                };
                Ok(ActionOutcome::FaultSet)
            }
        }
    }

    /// Appends an injected record to the log; a new id is applied to its
    /// managed fee's totals (a conflicting copy of an id is not).
    fn inject(&mut self, txn: VendorTxn) -> VendorTxn {
        let repeated = self.transactions.iter().any(|t| t.id == txn.id);
        let fee = txn.genesis_fee_id.filter(|id| self.fees.contains_key(id));
        if let (false, Some(fee)) = (repeated, fee) {
            self.apply_to_fee(FeeKey::Managed(fee), txn.kind, txn.amount);
        }
        self.index_transaction(&txn);
        self.transactions.push(txn.clone());
        txn
    }

    /// The injected cursor jump, if any.
    pub fn cursor_jump(&self) -> Option<i64> {
        self.cursor_jump
    }

    /// The injected raw replacement of a fee's field, if any.
    pub fn corrupt_field(&self, fee: FeeId) -> Option<&(String, String)> {
        self.corrupt_fees.get(&fee)
    }

    /// The injected raw replacement of a patron balance's field, if any.
    pub fn corrupt_balance_field(&self, patron: &str) -> Option<&(String, String)> {
        self.corrupt_balances.get(patron)
    }

    /// A payment or a waiver against a fee.
    fn charge(
        &mut self,
        fee: &FeeRef,
        kind: TxnKind,
        amount: Option<Money>,
        method: &str,
        at: NaiveDateTime,
    ) -> Result<ActionOutcome, ApiError> {
        let key = self.resolve(fee)?;
        let (owed, void) = self.owed(key);
        if void {
            return Err(ApiError::unprocessable("fee_void", "the fee is void"));
        }
        let amount = match amount {
            Some(amount) => positive("amount", amount)?,
            None => positive("the balance owed", owed)
                .map_err(|_| ApiError::unprocessable("nothing_owed", "the fee has no balance"))?,
        };
        let txn = self.record(key, kind, amount, method, at, None);
        if kind == TxnKind::Payment {
            let ledger = PaymentLedger {
                fee: key,
                amount,
                undone: Money::ZERO,
                occurred_at: at,
            };
            self.payments.insert(txn.id.clone(), ledger);
        }
        Ok(ActionOutcome::Transaction(txn))
    }

    /// A refund of part or all of what is left of a payment.
    fn undo(
        &mut self,
        payment_id: &VendorTxnId,
        kind: TxnKind,
        amount: Option<Money>,
        at: NaiveDateTime,
    ) -> Result<ActionOutcome, ApiError> {
        let ledger = *self.payments.get(payment_id).ok_or_else(|| {
            ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
        })?;
        let remaining = ledger.amount - ledger.undone;
        let amount = match amount {
            Some(amount) => positive("amount", amount)?,
            None => remaining,
        };
        if !remaining.is_positive() || amount > remaining {
            return Err(ApiError::unprocessable(
                "exceeds_payment",
                format!("only {remaining} of payment {payment_id} can still be undone"),
            ));
        }
        let method = if kind == TxnKind::Refund {
            "refund"
        } else {
            "returned_echeck"
        };
        let txn = self.record(
            ledger.fee,
            kind,
            amount,
            method,
            at,
            Some(payment_id.clone()),
        );
        if let Some(entry) = self.payments.get_mut(payment_id) {
            entry.undone += amount;
        }
        Ok(ActionOutcome::Transaction(txn))
    }

    fn reverse(&mut self, payment_id: &VendorTxnId, days: u32) -> Result<ActionOutcome, ApiError> {
        if days > REVERSAL_DAYS_MAX {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("days_later must be at most {REVERSAL_DAYS_MAX}"),
            ));
        }
        let paid_at = self
            .payments
            .get(payment_id)
            .map(|ledger| ledger.occurred_at)
            .ok_or_else(|| {
                ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
            })?;
        let at = paid_at + Days::days(i64::from(days));
        self.undo(payment_id, TxnKind::Reversal, None, at)
    }

    /// Appends a transaction to the log and applies it to its fee.
    fn record(
        &mut self,
        key: FeeKey,
        kind: TxnKind,
        amount: Money,
        method: &str,
        at: NaiveDateTime,
        reverses: Option<VendorTxnId>,
    ) -> VendorTxn {
        let sequence = self.transactions.len() as i64 + 1;
        let at = self.recording_at.map_or(at, |now| at.min(now));
        let (genesis_fee_id, vendor_fee_id, student_id) = match key {
            FeeKey::Managed(id) => {
                let fee = &self.fees[&id].fee;
                (Some(id), fee.vendor_fee_id.clone(), Some(fee.student_id))
            }
            FeeKey::Unmanaged(number) => {
                let fee = &self.unmanaged[&number];
                (None, fee.vendor_fee_id.clone(), fee.student_id)
            }
        };
        let txn = VendorTxn {
            id: VendorTxnId(format!("TXN{sequence:010}")),
            sequence,
            genesis_fee_id,
            vendor_fee_id,
            student_id,
            kind,
            amount,
            method: method.to_string(),
            occurred_at: at,
            reverses,
        };
        self.apply_to_fee(key, kind, amount);
        self.index_transaction(&txn);
        self.transactions.push(txn.clone());
        txn
    }

    fn apply_to_fee(&mut self, key: FeeKey, kind: TxnKind, amount: Money) {
        match key {
            FeeKey::Managed(id) => self.change_fee(id, |managed| {
                let fee = &mut managed.fee;
                match kind {
                    TxnKind::Payment => fee.paid += amount,
                    TxnKind::Waiver => fee.waived += amount,
                    TxnKind::Refund => fee.refunded += amount,
                    TxnKind::Reversal => fee.reversed += amount,
                }
            }),
            FeeKey::Unmanaged(number) => {
                self.change_unmanaged(number, kind.balance_effect(amount), kind)
            }
        }
    }

    fn index_transaction(&mut self, txn: &VendorTxn) {
        if let Some(fee) = txn.genesis_fee_id {
            self.transactions_by_fee
                .entry(fee)
                .or_default()
                .push(txn.sequence);
        }
        if let Some(student) = txn.student_id {
            self.transactions_by_student
                .entry(student)
                .or_default()
                .push(txn.sequence);
        }
    }

    fn add_unmanaged(
        &mut self,
        patron_id: String,
        student_id: Option<StudentId>,
        description: String,
        amount: Money,
        at: NaiveDateTime,
    ) -> Result<ActionOutcome, ApiError> {
        check_text("patron_id", &patron_id, PATRON_ID_CHARS_MAX)?;
        check_text("description", &description, DESCRIPTION_CHARS_MAX)?;
        positive("amount", amount)?;
        let number = self.next_vendor_number();
        let fee = UnmanagedFee {
            vendor_fee_id: format!("CPU{number:010}"),
            patron_id,
            student_id,
            description,
            amount,
            balance: amount,
            status: VendorFeeStatus::Open,
            created_at: at,
        };
        self.patrons.entry(fee.patron_id.clone()).or_default().other += amount;
        self.vendor_ids
            .insert(fee.vendor_fee_id.clone(), FeeKey::Unmanaged(number));
        self.unmanaged.insert(number, fee.clone());
        Ok(ActionOutcome::UnmanagedFee(fee))
    }

    fn duplicate(&mut self, id: FeeId, now: NaiveDateTime) -> Result<ActionOutcome, ApiError> {
        let original = self
            .fee(id)
            .ok_or_else(|| ApiError::not_found("fee_not_found", format!("no fee {id}")))?
            .clone();
        self.add_unmanaged(
            original.patron_id,
            Some(original.student_id),
            original.description,
            original.amount,
            now,
        )
    }

    /// Integration fees after the cursor (optionally of one student), and
    /// the cursor of the next page if there may be one.
    pub fn fees_page(
        &self,
        query: &FeeQuery,
        after: Option<FeeId>,
        limit: usize,
    ) -> (Vec<&VendorFee>, Option<FeeId>) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let items: Vec<&VendorFee> = match (&query.ids, query.student) {
            (Some(ids), _) => ids
                .iter()
                .filter(|id| after.is_none_or(|after| **id > after))
                .filter_map(|id| self.fees.get(id).map(|managed| &managed.fee))
                .filter(|fee| query.selects(fee))
                .take(limit)
                .collect(),
            (None, None) => self
                .fees
                .range((start, Bound::Unbounded))
                .map(|(_, managed)| &managed.fee)
                .filter(|fee| query.selects(fee))
                .take(limit)
                .collect(),
            (None, Some(student)) => {
                let from = match after {
                    None => Bound::Included((student, FeeId(i64::MIN))),
                    Some(id) => Bound::Excluded((student, id)),
                };
                self.fees_by_student
                    .range((from, Bound::Included((student, FeeId(i64::MAX)))))
                    .map(|(_, id)| &self.fees[id].fee)
                    .filter(|fee| query.selects(fee))
                    .take(limit)
                    .collect()
            }
        };
        let next = next_cursor(&items, limit, |fee| fee.genesis_fee_id);
        (items, next)
    }

    pub fn unmanaged_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<&UnmanagedFee>, Option<u64>) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let entries: Vec<(u64, &UnmanagedFee)> = self
            .unmanaged
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(number, fee)| (*number, fee))
            .collect();
        let next = next_cursor(&entries, limit, |(number, _)| *number);
        (entries.into_iter().map(|(_, fee)| fee).collect(), next)
    }

    pub fn balances_page(
        &self,
        after: Option<&str>,
        limit: usize,
        now: NaiveDateTime,
    ) -> (Vec<PatronBalance>, Option<String>) {
        let start = after.map_or(Bound::Unbounded, |patron| {
            Bound::Excluded(patron.to_string())
        });
        let items: Vec<PatronBalance> = self
            .patrons
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(patron, totals)| PatronBalance {
                patron_id: patron.clone(),
                balance: totals.integration + totals.other,
                integration_balance: totals.integration,
                other_balance: totals.other,
                as_of: now,
            })
            .collect();
        let next = next_cursor(&items, limit, |balance| balance.patron_id.clone());
        (items, next)
    }

    /// Transactions strictly after sequence `after`, at most `limit`.
    /// With `fees`, only the transactions of those fees.
    pub fn transactions_page(
        &self,
        scope: Scope,
        fees: Option<&[FeeId]>,
        after: i64,
        limit: usize,
    ) -> Result<TxnSelection<'_>, ApiError> {
        let total = self.transactions.len() as i64;
        if after < 0 || after > total {
            return Err(ApiError::new(
                409,
                "cursor_out_of_range",
                format!("after must be between 0 and the last sequence {total}"),
            ));
        }
        let sequences = match (fees, scope) {
            (None, Scope::All) => return Ok(self.log_slice(after, limit)),
            (None, scope) => self.scope_sequences(scope, after, limit),
            (Some(fees), scope) => self.fee_sequences(fees, scope, after, limit),
        };
        let has_more = sequences.len() > limit;
        let items: Vec<&VendorTxn> = sequences
            .iter()
            .take(limit)
            .map(|sequence| &self.transactions[(*sequence - 1) as usize])
            .collect();
        let next_after = items.last().map_or(after, |txn| txn.sequence);
        Ok(TxnSelection {
            items,
            next_after,
            has_more,
        })
    }

    /// Up to `limit + 1` sequences of these fees' transactions after
    /// `after` that the scope also selects, ascending.
    fn fee_sequences(&self, fees: &[FeeId], scope: Scope, after: i64, limit: usize) -> Vec<i64> {
        let mut sequences: Vec<i64> = fees
            .iter()
            .filter_map(|fee| self.transactions_by_fee.get(fee))
            .flat_map(|list| {
                let start = list.partition_point(|sequence| *sequence <= after);
                list[start..].iter().copied()
            })
            .filter(|sequence| self.scope_selects(scope, *sequence))
            .collect();
        sequences.sort_unstable();
        sequences.dedup();
        sequences.truncate(limit + 1);
        sequences
    }

    fn scope_selects(&self, scope: Scope, sequence: i64) -> bool {
        let student = self.transaction(sequence).and_then(|txn| txn.student_id);
        let linked = |guardian, student| self.guardian_linked(guardian, student);
        match (scope, student) {
            (Scope::All, _) => true,
            (_, None) => false,
            (Scope::Student(wanted), Some(actual)) => wanted == actual,
            (Scope::Guardian(guardian), Some(actual)) => linked(guardian, actual),
            (Scope::StudentOfGuardian(wanted, guardian), Some(actual)) => {
                wanted == actual && linked(guardian, actual)
            }
        }
    }

    /// Up to `limit + 1` sequences the scope selects after `after` (the
    /// whole log is read as a slice instead).
    fn scope_sequences(&self, scope: Scope, after: i64, limit: usize) -> Vec<i64> {
        match scope {
            Scope::All => Vec::new(),
            Scope::Student(student) => self.student_sequences(&[student], after, limit),
            Scope::Guardian(guardian) => {
                let students: Vec<StudentId> = self
                    .guardian_students
                    .get(&guardian)
                    .map(|set| set.keys().copied().collect())
                    .unwrap_or_default();
                self.student_sequences(&students, after, limit)
            }
            Scope::StudentOfGuardian(student, guardian) => {
                let linked = self.guardian_linked(guardian, student);
                let students = if linked { vec![student] } else { Vec::new() };
                self.student_sequences(&students, after, limit)
            }
        }
    }

    fn log_slice(&self, after: i64, limit: usize) -> TxnSelection<'_> {
        let start = after as usize;
        let end = (start + limit).min(self.transactions.len());
        let items: Vec<&VendorTxn> = self.transactions[start..end].iter().collect();
        TxnSelection {
            next_after: end as i64,
            has_more: end < self.transactions.len(),
            items,
        }
    }

    /// Up to `limit + 1` sequences of these students' transactions after
    /// `after`, ascending.
    fn student_sequences(&self, students: &[StudentId], after: i64, limit: usize) -> Vec<i64> {
        let mut sequences: Vec<i64> = students
            .iter()
            .filter_map(|student| self.transactions_by_student.get(student))
            .flat_map(|list| {
                let start = list.partition_point(|sequence| *sequence <= after);
                list[start..].iter().take(limit + 1).copied()
            })
            .collect();
        sequences.sort_unstable();
        sequences.truncate(limit + 1);
        sequences
    }

    /// A transaction by its sequence, for redelivery faults.
    pub fn transaction(&self, sequence: i64) -> Option<&VendorTxn> {
        let index = usize::try_from(sequence.checked_sub(1)?).ok()?;
        self.transactions.get(index)
    }

    pub fn summary(&self, district: &str) -> DistrictSummary {
        let fees = self.fees.values().map(|managed| &managed.fee);
        DistrictSummary {
            district: district.to_string(),
            fees: self.fees.len() as u64,
            unmanaged_fees: self.unmanaged.len() as u64,
            transactions: self.transactions.len() as u64,
            patrons: self.patrons.len() as u64,
            idempotency_keys: self.idempotency.len() as u64,
            total_amount: fees.clone().map(|fee| fee.amount).sum(),
            total_balance: fees.clone().map(|fee| fee.balance).sum(),
            invariant_violations: fees.filter(|fee| fee.balance != balance_of(fee)).count() as u64,
        }
    }

    pub fn snapshot(&self) -> DistrictSnapshot {
        DistrictSnapshot {
            fees: self.fees.values().cloned().collect(),
            unmanaged: self
                .unmanaged
                .iter()
                .map(|(n, fee)| (*n, fee.clone()))
                .collect(),
            transactions: self.transactions.clone(),
            idempotency: self
                .idempotency
                .iter()
                .map(|(key, reply)| (key.clone(), reply.clone()))
                .collect(),
            next_vendor_number: self.next_vendor_number,
        }
    }

    /// Rebuilds a district and all its indexes from a snapshot.
    pub fn from_snapshot(snapshot: DistrictSnapshot) -> District {
        let mut district = District {
            next_vendor_number: snapshot.next_vendor_number,
            idempotency: snapshot.idempotency.into_iter().collect(),
            ..District::default()
        };
        for managed in snapshot.fees {
            district.restore_fee(managed);
        }
        for (number, fee) in snapshot.unmanaged {
            district
                .patrons
                .entry(fee.patron_id.clone())
                .or_default()
                .other += unmanaged_share(&fee);
            district
                .vendor_ids
                .insert(fee.vendor_fee_id.clone(), FeeKey::Unmanaged(number));
            district.unmanaged.insert(number, fee);
        }
        for txn in snapshot.transactions {
            district.restore_transaction(txn);
        }
        district
    }

    fn restore_fee(&mut self, managed: ManagedFee) {
        let fee = &managed.fee;
        let id = fee.genesis_fee_id;
        self.patrons
            .entry(fee.patron_id.clone())
            .or_default()
            .integration += patron_share(&managed);
        self.vendor_ids
            .insert(fee.vendor_fee_id.clone(), FeeKey::Managed(id));
        self.fees_by_student.insert((fee.student_id, id));
        let linked = fee.clone();
        self.link_guardians(&linked, 1);
        self.fees.insert(id, managed);
    }

    fn restore_transaction(&mut self, txn: VendorTxn) {
        let key = self.vendor_ids.get(&txn.vendor_fee_id).copied();
        match (txn.kind, key, &txn.reverses) {
            (TxnKind::Payment, Some(fee), _) => {
                let ledger = PaymentLedger {
                    fee,
                    amount: txn.amount,
                    undone: Money::ZERO,
                    occurred_at: txn.occurred_at,
                };
                self.payments.insert(txn.id.clone(), ledger);
            }
            (TxnKind::Refund | TxnKind::Reversal, _, Some(payment)) => {
                if let Some(ledger) = self.payments.get_mut(payment) {
                    ledger.undone += txn.amount;
                }
            }
            _ => {}
        }
        self.index_transaction(&txn);
        self.transactions.push(txn);
    }
}

/// The cursor after a full page (the last item's key); none after a short one.
fn next_cursor<T, K>(items: &[T], limit: usize, key: impl Fn(&T) -> K) -> Option<K> {
    if items.len() < limit {
        return None;
    }
    items.last().map(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn now() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2024, 10, 1)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
    }

    fn push(id: i64, student: i64, cents: i64) -> FeePush {
        FeePush {
            genesis_fee_id: FeeId(id),
            student_id: StudentId(student),
            patron_id: format!("P{student}"),
            guardian_ids: vec![GuardianId(student * 10)],
            category: "BUS".into(),
            school: "HS".into(),
            description: "Bus pass".into(),
            amount: Money::from_cents(cents),
            genesis_credit: Money::ZERO,
            status: FeeStatus::Open,
            fee_date: NaiveDate::from_ymd_opt(2024, 9, 1).unwrap(),
            due_date: None,
        }
    }

    fn pay(district: &mut District, id: i64, cents: Option<i64>) -> VendorTxn {
        let action = ParentAction::Payment {
            fee: FeeRef::Genesis(FeeId(id)),
            amount: cents.map(Money::from_cents),
            method: None,
            occurred_at: None,
        };
        match district.apply(action, now()).unwrap() {
            ActionOutcome::Transaction(txn) => txn,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn payments_refunds_and_reversals_keep_the_identity() {
        let mut district = District::default();
        district.upsert(push(1, 5, 10_000), now()).unwrap();
        let partial = pay(&mut district, 1, Some(4_000));
        assert_eq!(
            district.fee(FeeId(1)).unwrap().status,
            VendorFeeStatus::Open
        );
        let rest = pay(&mut district, 1, None);
        assert_eq!(rest.amount, Money::from_cents(6_000));
        assert_eq!(
            district.fee(FeeId(1)).unwrap().status,
            VendorFeeStatus::Paid
        );
        pay(&mut district, 1, Some(500));
        assert_eq!(
            district.fee(FeeId(1)).unwrap().balance,
            Money::from_cents(-500)
        );
        let refund = ParentAction::Refund {
            payment_id: partial.id.clone(),
            amount: Some(Money::from_cents(1_000)),
            occurred_at: None,
        };
        district.apply(refund, now()).unwrap();
        let reversal = ParentAction::Reversal {
            payment_id: partial.id.clone(),
            days_later: Some(7),
        };
        let ActionOutcome::Transaction(reversed) = district.apply(reversal, now()).unwrap() else {
            panic!("expected a transaction")
        };
        assert_eq!(reversed.amount, Money::from_cents(3_000));
        // Seven days after the payment is in the future: dated now.
        assert_eq!(reversed.occurred_at, now());
        let again = ParentAction::Reversal {
            payment_id: partial.id,
            days_later: None,
        };
        assert_eq!(
            district.apply(again, now()).unwrap_err().code,
            "exceeds_payment"
        );
        let fee = district.fee(FeeId(1)).unwrap();
        assert_eq!(fee.balance, Money::from_cents(3_500));
        assert_eq!(fee.balance, balance_of(fee));
        assert_eq!(district.summary("d").invariant_violations, 0);
        let (balances, _) = district.balances_page(None, 10, now());
        assert_eq!(balances[0].integration_balance, Money::from_cents(3_500));
    }

    #[test]
    fn amount_is_locked_after_a_payment() {
        let mut district = District::default();
        district.upsert(push(1, 5, 10_000), now()).unwrap();
        pay(&mut district, 1, Some(100));
        let err = district.upsert(push(1, 5, 9_000), now()).unwrap_err();
        assert_eq!((err.status, err.code), (409, "amount_locked"));
        let mut credited = push(1, 5, 10_000);
        credited.genesis_credit = Money::from_cents(2_000);
        let outcome = district.upsert(credited, now()).unwrap();
        assert!(!outcome.created);
        assert_eq!(outcome.balance, Money::from_cents(7_900));
    }

    #[test]
    fn paging_by_student_and_guardian() {
        let mut district = District::default();
        for id in 1..=6 {
            district.upsert(push(id, 1 + id % 2, 1_000), now()).unwrap();
            pay(&mut district, id, Some(100));
        }
        let of_student = FeeQuery {
            student: Some(StudentId(2)),
            ..FeeQuery::default()
        };
        let (page, next) = district.fees_page(&of_student, None, 2);
        assert_eq!(
            page.iter().map(|f| f.genesis_fee_id.0).collect::<Vec<_>>(),
            vec![1, 3]
        );
        let (page, next) = district.fees_page(&of_student, next, 2);
        assert_eq!(
            page.iter().map(|f| f.genesis_fee_id.0).collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(next, None);
        let selection = district
            .transactions_page(Scope::Guardian(GuardianId(10)), None, 0, 2)
            .unwrap();
        let sequences: Vec<i64> = selection.items.iter().map(|t| t.sequence).collect();
        assert_eq!(sequences, vec![2, 4]);
        assert!(selection.has_more);
        let all = district.transactions_page(Scope::All, None, 4, 10).unwrap();
        assert_eq!(all.items.len(), 2);
        assert!(!all.has_more);
        assert_eq!(
            district
                .transactions_page(Scope::All, None, 7, 10)
                .err()
                .map(|e| e.status),
            Some(409)
        );
    }

    #[test]
    fn listing_by_fee_ids_and_update_time() {
        let mut district = District::default();
        let earlier = now() - chrono::Duration::hours(1);
        for id in 1..=6 {
            district
                .upsert(push(id, 1 + id % 2, 1_000), earlier)
                .unwrap();
            pay(&mut district, id, Some(100));
        }
        district.upsert(push(4, 1, 1_000), earlier).unwrap(); // unchanged: keeps its time
        let mut edited = push(5, 2, 1_000);
        edited.description = "Edited".to_string();
        district.upsert(edited, now()).unwrap();
        let ids = |page: &[&VendorFee]| page.iter().map(|f| f.genesis_fee_id.0).collect::<Vec<_>>();
        let picked = FeeQuery {
            ids: Some(vec![FeeId(2), FeeId(3), FeeId(5), FeeId(99)]),
            ..FeeQuery::default()
        };
        let (page, next) = district.fees_page(&picked, None, 2);
        assert_eq!(ids(&page), vec![2, 3]);
        let (page, next) = district.fees_page(&picked, next, 2);
        assert_eq!((ids(&page), next), (vec![5], None));
        let changed = FeeQuery {
            updated_since: Some(now()),
            ..FeeQuery::default()
        };
        assert_eq!(ids(&district.fees_page(&changed, None, 10).0), vec![5]);
        let both = FeeQuery {
            student: Some(StudentId(1)),
            ..changed
        };
        assert!(district.fees_page(&both, None, 10).0.is_empty());

        let of_fees = [FeeId(2), FeeId(5)];
        let selection = district
            .transactions_page(Scope::All, Some(&of_fees), 0, 1)
            .unwrap();
        assert_eq!(selection.items[0].genesis_fee_id, Some(FeeId(2)));
        assert!(selection.has_more);
        let rest = district
            .transactions_page(Scope::All, Some(&of_fees), selection.next_after, 10)
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.items[0].genesis_fee_id, Some(FeeId(5)));
        let of_student = district
            .transactions_page(Scope::Student(StudentId(1)), Some(&of_fees), 0, 10)
            .unwrap();
        assert_eq!(of_student.items.len(), 1);
        assert_eq!(of_student.items[0].genesis_fee_id, Some(FeeId(2)));
    }

    #[test]
    fn snapshot_round_trip_rebuilds_indexes() {
        let mut district = District::default();
        district.upsert(push(1, 5, 10_000), now()).unwrap();
        let payment = pay(&mut district, 1, Some(2_500));
        let duplicate = ParentAction::DuplicateFee {
            genesis_fee_id: FeeId(1),
        };
        district.apply(duplicate, now()).unwrap();
        let json = serde_json::to_string(&district.snapshot()).unwrap();
        let mut restored = District::from_snapshot(serde_json::from_str(&json).unwrap());
        assert_eq!(restored.summary("d"), district.summary("d"));
        let refund = ParentAction::Refund {
            payment_id: payment.id,
            amount: None,
            occurred_at: None,
        };
        restored.apply(refund, now()).unwrap();
        assert_eq!(
            restored.fee(FeeId(1)).unwrap().balance,
            Money::from_cents(10_000)
        );
        let (balances, _) = restored.balances_page(None, 10, now());
        assert_eq!(balances[0].balance, Money::from_cents(20_000));
    }
}
