//! The shared vocabulary of both sides: ids, fee and transaction kinds, and the
//! plain records that the database layer, the Community Pass client and the
//! reconciliation core exchange. No IO and no database or HTTP types here.

use std::fmt;
use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

use crate::money::Money;

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.trim().parse().map($name)
            }
        }
    };
}

int_id!(
    /// A Genesis student fee id; also the key Community Pass deduplicates on.
    FeeId
);
int_id!(
    /// A Genesis student id.
    StudentId
);
int_id!(
    /// A Genesis guardian (contact) id.
    GuardianId
);

/// The vendor's own id of one account transaction; Genesis posts each one once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VendorTxnId(pub String);

impl fmt::Display for VendorTxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Declares a closed set of lowercase string codes shared by the database and the wire.
macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownCode;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownCode { kind: stringify!($name), code: other.to_string() }),
                }
            }
        }
    };
}

/// A code read from the database or the wire that is not one of the known values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} code {code:?}")]
pub struct UnknownCode {
    pub kind: &'static str,
    pub code: String,
}

string_enum!(
    /// A Genesis fee's status.
    FeeStatus { Open => "open", Waived => "waived", Void => "void" }
);

string_enum!(
    /// What an account transaction does to a fee's balance.
    TxnKind { Payment => "payment", Refund => "refund", Waiver => "waiver", Reversal => "reversal" }
);

string_enum!(
    /// Which system a transaction was recorded in first.
    TxnSource { Genesis => "genesis", CommunityPass => "community_pass" }
);

string_enum!(
    /// A student's enrolment status in Genesis.
    StudentStatus { Active => "active", Withdrawn => "withdrawn" }
);

string_enum!(
    /// A fee's status as Community Pass shows it to the parent.
    VendorFeeStatus { Open => "open", Paid => "paid", Waived => "waived", Void => "void" }
);

impl TxnKind {
    /// The sign of this kind in the conservation identity
    /// `balance = amount − payments − waivers + refunds + reversals`:
    /// −1 for payments and waivers, +1 for refunds and reversals.
    pub fn balance_sign(self) -> i64 {
        match self {
            TxnKind::Payment | TxnKind::Waiver => -1,
            TxnKind::Refund | TxnKind::Reversal => 1,
        }
    }

    /// The signed effect of a transaction of this kind on the balance.
    pub fn balance_effect(self, amount: Money) -> Money {
        if self.balance_sign() < 0 {
            -amount
        } else {
            amount
        }
    }
}

/// A school in the district.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct School {
    pub code: String,
    pub name: String,
    pub low_grade: String,
    pub high_grade: String,
}

/// A student as Genesis holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Student {
    pub id: StudentId,
    pub first_name: String,
    pub last_name: String,
    pub grade: String,
    pub school: String,
    pub status: StudentStatus,
    pub birth_date: NaiveDate,
    pub email: Option<String>,
}

/// A guardian (contact) as Genesis holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guardian {
    pub id: GuardianId,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub portal_username: Option<String>,
}

/// The relation of one guardian to one student. A student may have guardians
/// in two households (`household` 1 and 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardianLink {
    pub student_id: StudentId,
    pub guardian_id: GuardianId,
    pub relationship: String,
    pub household: i32,
    pub portal_access: bool,
    pub billing_contact: bool,
}

/// A fee category (a `FEE_CATEGORY` code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeCategory {
    pub code: String,
    pub description: String,
    pub default_amount: Money,
}

/// A Genesis transaction not yet stored (no id assigned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGenesisTxn {
    pub fee_id: FeeId,
    pub kind: TxnKind,
    pub amount: Money,
    pub method: String,
    pub source: TxnSource,
    pub vendor_txn_id: Option<VendorTxnId>,
    pub posted_at: NaiveDateTime,
    pub note: Option<String>,
}

/// One student fee as Genesis holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisFee {
    pub id: FeeId,
    pub student_id: StudentId,
    pub category: String,
    pub school: String,
    pub description: String,
    pub amount: Money,
    pub fee_date: NaiveDate,
    pub due_date: Option<NaiveDate>,
    pub status: FeeStatus,
    pub created_at: NaiveDateTime,
    pub modified_at: NaiveDateTime,
}

/// One payment, refund, waiver or reversal recorded in Genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisTxn {
    pub id: i64,
    pub fee_id: FeeId,
    pub kind: TxnKind,
    pub amount: Money,
    pub method: String,
    pub source: TxnSource,
    pub vendor_txn_id: Option<VendorTxnId>,
    pub posted_at: NaiveDateTime,
}

/// One fee as Community Pass lists it (integration-created fees only).
///
/// Invariant kept by Community Pass:
/// `balance = amount − genesis_credit − paid − waived + refunded + reversed`,
/// where `genesis_credit` is what Genesis recorded itself (manual payments and
/// waivers, net of Genesis refunds) and pushed with the fee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorFee {
    pub genesis_fee_id: FeeId,
    pub vendor_fee_id: String,
    pub student_id: StudentId,
    pub patron_id: String,
    pub category: String,
    pub school: String,
    pub description: String,
    pub amount: Money,
    pub genesis_credit: Money,
    pub paid: Money,
    pub refunded: Money,
    pub waived: Money,
    pub reversed: Money,
    pub balance: Money,
    pub status: VendorFeeStatus,
    pub fee_date: NaiveDate,
    pub due_date: Option<NaiveDate>,
    pub updated_at: NaiveDateTime,
    /// The guardians Community Pass links to the student through this fee,
    /// exactly as last pushed (sorted).
    #[serde(default)]
    pub guardian_ids: Vec<GuardianId>,
    /// Community Pass's revision of this fee record: it grows with every
    /// change (a push that changed something, a payment, a refund, ...).
    #[serde(default)]
    pub revision: i64,
}

/// One account transaction made in Community Pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorTxn {
    pub id: VendorTxnId,
    /// Position on the vendor's monotonic transaction cursor.
    pub sequence: i64,
    pub genesis_fee_id: Option<FeeId>,
    pub vendor_fee_id: String,
    pub student_id: Option<StudentId>,
    pub kind: TxnKind,
    pub amount: Money,
    pub method: String,
    pub occurred_at: NaiveDateTime,
    /// For a reversal or refund: the payment it undoes.
    pub reverses: Option<VendorTxnId>,
}

impl VendorTxn {
    /// Whether two deliveries are the same record: everything but their
    /// position on the cursor agrees. Two copies of one id that are not the
    /// same record are conflicting copies, kept as evidence and never posted.
    pub fn same_record(&self, other: &VendorTxn) -> bool {
        self.id == other.id
            && self.genesis_fee_id == other.genesis_fee_id
            && self.vendor_fee_id == other.vendor_fee_id
            && self.student_id == other.student_id
            && self.kind == other.kind
            && self.amount == other.amount
            && self.method == other.method
            && self.occurred_at == other.occurred_at
            && self.reverses == other.reverses
    }

    /// The record in words, for a person comparing copies.
    pub fn describe(&self) -> String {
        let fee = self
            .genesis_fee_id
            .map_or_else(|| "no Genesis fee".to_string(), |fee| format!("fee {fee}"));
        let student = self
            .student_id
            .map_or_else(|| "no student".to_string(), |s| format!("student {s}"));
        let reverses = self
            .reverses
            .as_ref()
            .map_or_else(String::new, |r| format!(", reverses {r}"));
        format!(
            "{} {} on {fee} ({}) for {student} at {} by {} (sequence {}{reverses})",
            self.kind,
            self.amount,
            self.vendor_fee_id,
            self.occurred_at,
            self.method,
            self.sequence
        )
    }
}

/// What the engine pushes for one Genesis fee (the body of a fee upsert).
///
/// `genesis_credit` is what Genesis recorded itself: manual payments and
/// waivers, net of Genesis refunds. It goes below zero when the office
/// refunds money that was paid in Community Pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeePush {
    pub genesis_fee_id: FeeId,
    pub student_id: StudentId,
    pub patron_id: String,
    pub guardian_ids: Vec<GuardianId>,
    pub category: String,
    pub school: String,
    pub description: String,
    pub amount: Money,
    pub genesis_credit: Money,
    pub status: FeeStatus,
    pub fee_date: NaiveDate,
    pub due_date: Option<NaiveDate>,
}

/// A patron's whole-account balance in Community Pass, including fees that
/// Genesis never created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatronBalance {
    pub patron_id: String,
    pub balance: Money,
    pub integration_balance: Money,
    pub other_balance: Money,
    pub as_of: NaiveDateTime,
}

/// A fee in Community Pass that the integration did not create (preflight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmanagedFee {
    pub vendor_fee_id: String,
    pub patron_id: String,
    pub student_id: Option<StudentId>,
    pub description: String,
    pub amount: Money,
    pub balance: Money,
    pub status: VendorFeeStatus,
    pub created_at: NaiveDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for kind in TxnKind::ALL {
            assert_eq!(kind.as_str().parse::<TxnKind>().unwrap(), *kind);
        }
        assert_eq!(TxnSource::CommunityPass.as_str(), "community_pass");
        let err = "bogus".parse::<FeeStatus>().unwrap_err();
        assert_eq!(err.to_string(), "unknown FeeStatus code \"bogus\"");
    }

    #[test]
    fn balance_signs_follow_the_conservation_identity() {
        let ten = Money::from_cents(1000);
        assert_eq!(TxnKind::Payment.balance_effect(ten), -ten);
        assert_eq!(TxnKind::Waiver.balance_effect(ten), -ten);
        assert_eq!(TxnKind::Refund.balance_effect(ten), ten);
        assert_eq!(TxnKind::Reversal.balance_effect(ten), ten);
    }
}
