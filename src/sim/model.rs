//! The simulator's admin vocabulary, shared by the server and `AdminClient`:
//! fault settings, statistics, parent-side actions, scenario generation.
//! Documented for outsiders in `api/simulator-admin.openapi.yaml`.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::domain::{FeeId, StudentId, TxnKind, UnmanagedFee, VendorTxn, VendorTxnId};
use crate::money::Money;

/// Faults injected into the vendor API (never into `/_sim`). Rates are
/// probabilities per request (or per transaction page), drawn from the
/// simulator's seeded generator so a scenario replays exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Added to every vendor API request.
    pub latency_ms: u64,
    /// Chance that a request is delayed by `latency_spike_ms` more.
    pub latency_spike_rate: f64,
    pub latency_spike_ms: u64,
    /// Chance that a request is answered 500/502/503 without being handled.
    pub error_5xx_rate: f64,
    /// Chance that a request starts a burst of 429 answers.
    pub rate_limit_burst_rate: f64,
    /// Requests refused in one burst (including the first).
    pub rate_limit_burst_len: u32,
    /// The `Retry-After` seconds sent with a 429.
    pub retry_after_secs: u64,
    /// Chance that the connection is closed without an answer, after the
    /// request was handled (a lost answer: the client must retry safely).
    pub drop_rate: f64,
    /// Chance that a transaction page also carries copies of some records,
    /// including ones delivered on earlier pages.
    pub duplicate_rate: f64,
    /// Chance that a transaction page is delivered in shuffled order.
    pub reorder_rate: f64,
    /// Chance that a fee upsert is answered as applied but changes nothing
    /// (a vendor that loses writes): the engine must notice on re-reading.
    pub lost_write_rate: f64,
}

/// The largest latency or spike the simulator accepts, in milliseconds.
pub const LATENCY_MS_MAX: u64 = 120_000;
/// The longest 429 burst the simulator accepts.
pub const BURST_LEN_MAX: u32 = 1_000;

impl FaultConfig {
    /// Checks every rate is a probability and every duration is bounded.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("latency_spike_rate", self.latency_spike_rate),
            ("error_5xx_rate", self.error_5xx_rate),
            ("rate_limit_burst_rate", self.rate_limit_burst_rate),
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("reorder_rate", self.reorder_rate),
            ("lost_write_rate", self.lost_write_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if self.latency_ms > LATENCY_MS_MAX || self.latency_spike_ms > LATENCY_MS_MAX {
            return Err(format!("latencies must be at most {LATENCY_MS_MAX} ms"));
        }
        if self.rate_limit_burst_len > BURST_LEN_MAX {
            return Err(format!(
                "rate_limit_burst_len must be at most {BURST_LEN_MAX}"
            ));
        }
        if self.retry_after_secs > 3_600 {
            return Err("retry_after_secs must be at most 3600".to_string());
        }
        Ok(())
    }
}

/// Faults injected so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    pub latency_spikes: u64,
    pub errors_5xx: u64,
    pub rate_limited: u64,
    pub dropped: u64,
    pub duplicated_pages: u64,
    pub reordered_pages: u64,
    #[serde(default)]
    pub lost_writes: u64,
}

/// What the simulator has served since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Vendor API requests received (admin requests are not counted).
    pub requests: u64,
    /// Vendor API requests by route, e.g. `GET /v1/fees`.
    pub requests_by_route: BTreeMap<String, u64>,
    /// Vendor API answers by HTTP status.
    pub responses_by_status: BTreeMap<u16, u64>,
    pub faults: FaultCounts,
}

/// Names a fee for a parent action: by Genesis id (integration fees) or by
/// Community Pass id (any fee, including unmanaged ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeeRef {
    #[serde(rename = "genesis_fee_id")]
    Genesis(FeeId),
    #[serde(rename = "vendor_fee_id")]
    Vendor(String),
}

/// Something a parent (or the vendor's office) does in Community Pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParentAction {
    /// A payment; without `amount` it pays the balance. Less is a partial
    /// payment, more an over-payment (a credit on the fee).
    Payment {
        fee: FeeRef,
        #[serde(default)]
        amount: Option<Money>,
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        occurred_at: Option<NaiveDateTime>,
    },
    /// A waiver made in Community Pass; without `amount` it waives the balance.
    Waiver {
        fee: FeeRef,
        #[serde(default)]
        amount: Option<Money>,
        #[serde(default)]
        occurred_at: Option<NaiveDateTime>,
    },
    /// A refund of (part of) a payment; without `amount` all that is left.
    Refund {
        payment_id: VendorTxnId,
        #[serde(default)]
        amount: Option<Money>,
        #[serde(default)]
        occurred_at: Option<NaiveDateTime>,
    },
    /// A returned e-check or chargeback: undoes what is left of a payment,
    /// dated `days_later` days (default 5) after it, but never after the
    /// moment it is recorded.
    Reversal {
        payment_id: VendorTxnId,
        #[serde(default)]
        days_later: Option<u32>,
    },
    /// A fee created in Community Pass, not by Genesis.
    UnmanagedFee {
        patron_id: String,
        #[serde(default)]
        student_id: Option<StudentId>,
        description: String,
        amount: Money,
        #[serde(default)]
        created_at: Option<NaiveDateTime>,
    },
    /// An unmanaged copy of an integration fee (same student, amount and
    /// description): the duplicate a preflight must find.
    DuplicateFee { genesis_fee_id: FeeId },
    /// Fault injection: appends a record to the transaction log as given,
    /// whether or not it makes sense (a conflicting copy of an existing id,
    /// another student, an unknown vendor fee id, a refund naming no
    /// payment, a reversal larger than the fee, a payment on a void fee, a
    /// date in the future). Unset fields come from the fee; a new id is
    /// applied to the fee's totals, a repeated one (a conflicting copy) is not.
    InjectTransaction {
        #[serde(default)]
        id: Option<VendorTxnId>,
        genesis_fee_id: FeeId,
        #[serde(default)]
        vendor_fee_id: Option<String>,
        #[serde(default)]
        student_id: Option<StudentId>,
        kind: TxnKind,
        amount: Money,
        #[serde(default)]
        occurred_at: Option<NaiveDateTime>,
        #[serde(default)]
        reverses: Option<VendorTxnId>,
    },
    /// Fault injection: the last page of every transaction listing names
    /// this `next_after` (a cursor jump) until set again to none.
    CursorJump {
        #[serde(default)]
        next_after: Option<i64>,
    },
    /// Fault injection: the fee is served with this raw JSON text in place
    /// of `field` (e.g. `amount` as `"1e3"`) until set again to none.
    CorruptFee {
        genesis_fee_id: FeeId,
        field: String,
        #[serde(default)]
        raw: Option<String>,
    },
    /// Fault injection: the patron's balance is served with this raw JSON
    /// text in place of `field` (e.g. `balance` as `"12.345"`) until set
    /// again to none.
    CorruptBalance {
        patron_id: String,
        field: String,
        #[serde(default)]
        raw: Option<String>,
    },
}

/// What one action produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    Transaction(VendorTxn),
    UnmanagedFee(UnmanagedFee),
    /// A fault was set (or cleared).
    FaultSet,
}

/// A batch of parent actions, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBatch {
    pub actions: Vec<ParentAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResults {
    pub results: Vec<ActionOutcome>,
}

/// A synthetic district: `fees` integration fees with ids from
/// `first_fee_id`, `transactions` parent-side transactions on them, and
/// `unmanaged_fees` fees Genesis never created. Seeded, so reproducible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    pub fees: u32,
    #[serde(default)]
    pub transactions: u32,
    #[serde(default)]
    pub unmanaged_fees: u32,
    /// Defaults to one student per five fees.
    #[serde(default)]
    pub students: Option<u32>,
    #[serde(default = "first_fee_id_default")]
    pub first_fee_id: i64,
    /// Defaults to the simulator's seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

fn first_fee_id_default() -> i64 {
    1
}

/// The most fees, transactions or unmanaged fees one generate call makes.
pub const GENERATE_MAX: u32 = 5_000_000;

/// Counts and totals of one district, and whether every fee keeps the
/// balance identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistrictSummary {
    pub district: String,
    pub fees: u64,
    pub unmanaged_fees: u64,
    pub transactions: u64,
    pub patrons: u64,
    pub idempotency_keys: u64,
    #[serde(with = "crate::money::total")]
    pub total_amount: Money,
    #[serde(with = "crate::money::total")]
    pub total_balance: Money,
    /// Fees whose balance breaks `amount − genesis_credit − paid − waived +
    /// refunded + reversed` (always 0 unless the simulator has a bug).
    pub invariant_violations: u64,
}

/// The result of a bulk fee load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub created: u64,
    pub updated: u64,
}

/// Registers a district and its API key. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDistrict {
    pub district: String,
    pub api_key: String,
}

impl std::fmt::Debug for NewDistrict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDistrict")
            .field("district", &self.district)
            .field("api_key", &crate::secret::REDACTED)
            .finish()
    }
}

/// A district's new API key: the vendor rotating it. The old key is
/// refused from then on. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotatedKey {
    pub api_key: String,
}

impl std::fmt::Debug for RotatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatedKey")
            .field("api_key", &crate::secret::REDACTED)
            .finish()
    }
}

/// The JSON error body of both the vendor API and the admin surface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}
