//! `AdminClient`: a small typed client of the simulator's admin surface
//! (`/_sim`), for tests, the demo and benchmarks. Blocking; call it from
//! ordinary threads, not from inside an async runtime.

use std::time::Duration;

use anyhow::Context;
use reqwest::blocking::{Client, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::generate::GenerateReport;
use super::model::{
    ActionBatch, ActionOutcome, ActionResults, DistrictSummary, FaultConfig, FeeRef, GenerateSpec,
    LoadReport, NewDistrict, ParentAction, SimStats,
};
use super::DEFAULT_DISTRICT;
use crate::domain::{FeeId, FeePush, UnmanagedFee, VendorTxn, VendorTxnId};
use crate::money::Money;
use crate::secret::Secret;

/// Admin calls can load or generate a large district.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct AdminClient {
    client: Client,
    base: String,
    district: String,
}

impl AdminClient {
    /// A client of the simulator at `base_url`, bound to `DEFAULT_DISTRICT`.
    pub fn new(base_url: &str) -> anyhow::Result<AdminClient> {
        crate::portal::http::install_crypto_provider();
        let client = Client::builder()
            .timeout(ADMIN_TIMEOUT)
            .build()
            .context("cannot build the admin HTTP client")?;
        Ok(AdminClient {
            client,
            base: format!("{}/_sim", base_url.trim_end_matches('/')),
            district: DEFAULT_DISTRICT.to_string(),
        })
    }

    /// The same client, bound to another district.
    pub fn for_district(&self, district: &str) -> AdminClient {
        AdminClient {
            district: district.to_string(),
            ..self.clone()
        }
    }

    fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        let response = request.send().context("simulator admin call failed")?;
        let status = response.status();
        let body = response
            .bytes()
            .context("simulator admin answer unreadable")?;
        if !status.is_success() {
            anyhow::bail!(
                "simulator admin call refused ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        serde_json::from_slice(&body).context("simulator admin answer is not the expected JSON")
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.client.get(format!("{}{path}", self.base)))
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body))
    }

    fn district_path(&self, action: &str) -> String {
        format!("/districts/{}/{action}", self.district)
    }

    /// Moves the simulator's clock forward by `secs` (tests cross a second
    /// of its whole-second clock without sleeping).
    pub fn advance_clock(&self, secs: i64) -> anyhow::Result<()> {
        let _: serde_json::Value =
            self.post("/_sim/clock", &serde_json::json!({"advance_secs": secs}))?;
        Ok(())
    }

    pub fn health(&self) -> anyhow::Result<()> {
        self.get::<serde_json::Value>("/health").map(|_| ())
    }

    pub fn stats(&self) -> anyhow::Result<SimStats> {
        self.get("/stats")
    }

    pub fn faults(&self) -> anyhow::Result<FaultConfig> {
        self.get("/faults")
    }

    pub fn set_faults(&self, faults: &FaultConfig) -> anyhow::Result<FaultConfig> {
        self.send(
            self.client
                .put(format!("{}/faults", self.base))
                .json(faults),
        )
    }

    /// Empties every district and restores the start-up faults, seed and stats.
    pub fn reset(&self) -> anyhow::Result<()> {
        self.post::<_, serde_json::Value>("/reset", &serde_json::json!({}))
            .map(|_| ())
    }

    pub fn save(&self) -> anyhow::Result<()> {
        self.post::<_, serde_json::Value>("/save", &serde_json::json!({}))
            .map(|_| ())
    }

    pub fn add_district(&self, district: &str, api_key: &Secret) -> anyhow::Result<()> {
        let body = NewDistrict {
            district: district.to_string(),
            api_key: api_key.expose().to_string(),
        };
        self.post::<_, serde_json::Value>("/districts", &body)
            .map(|_| ())
    }

    /// Rotates this district's API key: `api_key` replaces it, and the old
    /// key is refused from now on.
    pub fn rotate_key(&self, api_key: &Secret) -> anyhow::Result<()> {
        let body = super::model::RotatedKey {
            api_key: api_key.expose().to_string(),
        };
        self.post::<_, serde_json::Value>(&self.district_path("rotate-key"), &body)
            .map(|_| ())
    }

    pub fn summary(&self) -> anyhow::Result<DistrictSummary> {
        self.get(&self.district_path("summary"))
    }

    /// Loads fees as if Genesis had pushed each one.
    pub fn load_fees(&self, fees: &[FeePush]) -> anyhow::Result<LoadReport> {
        self.post(&self.district_path("fees"), &fees)
    }

    pub fn generate(&self, spec: &GenerateSpec) -> anyhow::Result<GenerateReport> {
        self.post(&self.district_path("generate"), spec)
    }

    /// Applies parent-side actions in order.
    pub fn act(&self, actions: Vec<ParentAction>) -> anyhow::Result<Vec<ActionOutcome>> {
        let results: ActionResults =
            self.post(&self.district_path("actions"), &ActionBatch { actions })?;
        Ok(results.results)
    }

    fn one_transaction(&self, action: ParentAction) -> anyhow::Result<VendorTxn> {
        match self.act(vec![action])?.pop() {
            Some(ActionOutcome::Transaction(txn)) => Ok(txn),
            other => anyhow::bail!("expected a transaction, got {other:?}"),
        }
    }

    /// Pays `amount` (or the whole balance) on an integration fee.
    pub fn pay(&self, fee: FeeId, amount: Option<Money>) -> anyhow::Result<VendorTxn> {
        self.one_transaction(ParentAction::Payment {
            fee: FeeRef::Genesis(fee),
            amount,
            method: None,
            occurred_at: None,
        })
    }

    pub fn waive(&self, fee: FeeId, amount: Option<Money>) -> anyhow::Result<VendorTxn> {
        self.one_transaction(ParentAction::Waiver {
            fee: FeeRef::Genesis(fee),
            amount,
            occurred_at: None,
        })
    }

    pub fn refund(
        &self,
        payment: &VendorTxnId,
        amount: Option<Money>,
    ) -> anyhow::Result<VendorTxn> {
        self.one_transaction(ParentAction::Refund {
            payment_id: payment.clone(),
            amount,
            occurred_at: None,
        })
    }

    /// A returned e-check, dated `days_later` days after the payment.
    pub fn reverse(&self, payment: &VendorTxnId, days_later: u32) -> anyhow::Result<VendorTxn> {
        self.one_transaction(ParentAction::Reversal {
            payment_id: payment.clone(),
            days_later: Some(days_later),
        })
    }

    /// Adds an unmanaged copy of an integration fee (a likely duplicate).
    pub fn duplicate(&self, fee: FeeId) -> anyhow::Result<UnmanagedFee> {
        match self
            .act(vec![ParentAction::DuplicateFee {
                genesis_fee_id: fee,
            }])?
            .pop()
        {
            Some(ActionOutcome::UnmanagedFee(fee)) => Ok(fee),
            other => anyhow::bail!("expected an unmanaged fee, got {other:?}"),
        }
    }
}
