//! What the reconciliation core reads: a snapshot of each side, the
//! integration's own record of what it pushed per fee, the district's sending
//! policy and the scope of one run. Plain data, built by the shell.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::domain::{
    FeeId, FeeStatus, GenesisFee, GenesisTxn, GuardianId, StudentId, VendorFee, VendorTxn,
};
use crate::money::Money;

/// The integration's own record of one fee it created in Community Pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeLink {
    pub fee_id: FeeId,
    /// Community Pass's id of the fee, once a push was acknowledged.
    pub vendor_fee_id: Option<String>,
    pub pushed_amount: Option<Money>,
    pub pushed_status: Option<FeeStatus>,
    pub pushed_credit: Option<Money>,
    /// Set once Community Pass applied a payment: the amount is read-only.
    pub amount_locked: bool,
}

impl FeeLink {
    /// A link for a fee the integration manages but has not pushed yet.
    pub fn unsent(fee_id: FeeId) -> FeeLink {
        FeeLink {
            fee_id,
            vendor_fee_id: None,
            pushed_amount: None,
            pushed_status: None,
            pushed_credit: None,
            amount_locked: false,
        }
    }

    /// Whether Community Pass ever acknowledged a push of this fee.
    pub fn was_sent(&self) -> bool {
        self.vendor_fee_id.is_some()
    }
}

/// Who a student's fees belong to in Community Pass, as Genesis says now:
/// the patron (under the district's patron id rule) and the guardians
/// linked to the student (sorted, each once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentParty {
    pub student_id: StudentId,
    pub patron_id: String,
    pub guardian_ids: Vec<GuardianId>,
}

/// Everything the core needs from Genesis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisSnapshot {
    pub fees: Vec<GenesisFee>,
    pub txns: Vec<GenesisTxn>,
    pub links: Vec<FeeLink>,
    /// The patron and guardians of each student with fees; a student not
    /// listed is not compared on those two fields.
    #[serde(default)]
    pub parties: Vec<StudentParty>,
}

/// Everything the core needs from Community Pass: integration fees and their
/// account transactions, as delivered (duplicates included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorSnapshot {
    pub fees: Vec<VendorFee>,
    pub txns: Vec<VendorTxn>,
}

/// Which fee categories are sent to Community Pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CategorySelection {
    #[default]
    All,
    Only(BTreeSet<String>),
}

impl CategorySelection {
    pub fn includes(&self, category: &str) -> bool {
        match self {
            CategorySelection::All => true,
            CategorySelection::Only(selected) => selected.contains(category),
        }
    }
}

/// The district's sending policy (DESIGN.md §2 task 1, §3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Fees dated before this day are never sent; no cutoff means nothing is
    /// sent yet (the cutoff is the last setup step).
    pub cutoff: Option<NaiveDate>,
    pub categories: CategorySelection,
    pub excluded_schools: BTreeSet<String>,
}

/// Why a Genesis fee may not be sent to Community Pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligibility {
    NoCutoffSet,
    BeforeCutoff,
    CategoryNotSelected,
    SchoolExcluded,
}

impl Ineligibility {
    pub fn describe(self) -> &'static str {
        match self {
            Ineligibility::NoCutoffSet => "no cutoff date is set, so nothing may be sent",
            Ineligibility::BeforeCutoff => "the fee is dated before the cutoff",
            Ineligibility::CategoryNotSelected => "the fee's category is not selected",
            Ineligibility::SchoolExcluded => "the fee's school is excluded",
        }
    }
}

impl Policy {
    /// `Ok` when the fee may be sent, else the first rule it breaks.
    pub fn eligibility(&self, fee: &GenesisFee) -> Result<(), Ineligibility> {
        let cutoff = self.cutoff.ok_or(Ineligibility::NoCutoffSet)?;
        if fee.fee_date < cutoff {
            return Err(Ineligibility::BeforeCutoff);
        }
        if !self.categories.includes(&fee.category) {
            return Err(Ineligibility::CategoryNotSelected);
        }
        if self.excluded_schools.contains(&fee.school) {
            return Err(Ineligibility::SchoolExcluded);
        }
        Ok(())
    }
}

/// Which records one run examines: fees dated within `[from, to]` (inclusive,
/// open when `None`) and, optionally, one student's fees only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub student: Option<StudentId>,
}

impl Scope {
    /// The whole district, every date.
    pub fn everything() -> Scope {
        Scope::default()
    }

    /// Whether a record with this fee date and student is examined. A record
    /// whose fee date or student is unknown is examined only when the scope
    /// does not filter on what is unknown.
    pub fn includes(&self, fee_date: Option<NaiveDate>, student: Option<StudentId>) -> bool {
        self.includes_date(fee_date) && self.includes_student(student)
    }

    fn includes_date(&self, fee_date: Option<NaiveDate>) -> bool {
        match fee_date {
            Some(date) => {
                self.from.is_none_or(|from| date >= from) && self.to.is_none_or(|to| date <= to)
            }
            None => self.from.is_none() && self.to.is_none(),
        }
    }

    fn includes_student(&self, student: Option<StudentId>) -> bool {
        match (self.student, student) {
            (None, _) => true,
            (Some(wanted), Some(actual)) => wanted == actual,
            (Some(_), None) => false,
        }
    }
}
