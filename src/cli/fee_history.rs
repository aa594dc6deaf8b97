//! `cpsync fee-history FEE_ID`: one fee's whole life in time order, with the
//! run id of everything the integration did: the Genesis row (created,
//! modified), its transactions (payments, partial payments, refunds,
//! waivers, reversals, with their source), the link to Community Pass
//! (first sent, last push, the amount lock), every audit row about the fee
//! (pushes, postings), what reconciliation runs found, and its outbox
//! entries. The timeline is built by a pure function (`timeline`) from the
//! records the shell gathers.

use anyhow::bail;
use chrono::NaiveDateTime;
use serde::Serialize;

use super::{exit, Context};
use crate::db::audit::{self, AuditRecord};
use crate::db::discrepancies::{self, StoredDiscrepancy};
use crate::db::links::{self, LinkDetail};
use crate::db::outbox::{self, OutboxRecord};
use crate::db::{genesis, DbConnection};
use crate::domain::{FeeId, GenesisFee, GenesisTxn, TxnKind};
use crate::money::Money;
use crate::portal_view::fee_balance;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Genesis fee id.
    fee_id: FeeId,
    /// Print the fee, its link and the timeline as JSON.
    #[arg(long)]
    json: bool,
}

/// Everything stored about one fee.
#[derive(Debug, Clone, Default)]
pub struct FeeRecords {
    pub fee: Option<GenesisFee>,
    pub txns: Vec<GenesisTxn>,
    pub link: Option<LinkDetail>,
    pub audit: Vec<AuditRecord>,
    pub discrepancies: Vec<StoredDiscrepancy>,
    pub outbox: Vec<OutboxRecord>,
}

impl FeeRecords {
    fn is_empty(&self) -> bool {
        self.fee.is_none()
            && self.txns.is_empty()
            && self.link.is_none()
            && self.audit.is_empty()
            && self.discrepancies.is_empty()
            && self.outbox.is_empty()
    }
}

/// Where an event of the timeline comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    Genesis,
    Link,
    Audit,
    Reconciliation,
    Outbox,
}

impl EventSource {
    fn as_str(self) -> &'static str {
        match self {
            EventSource::Genesis => "genesis",
            EventSource::Link => "link",
            EventSource::Audit => "audit",
            EventSource::Reconciliation => "reconcile",
            EventSource::Outbox => "outbox",
        }
    }
}

/// One line of a fee's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub at: NaiveDateTime,
    pub run_id: Option<i64>,
    pub source: EventSource,
    pub what: String,
}

fn event(at: NaiveDateTime, run_id: Option<i64>, source: EventSource, what: String) -> Event {
    Event {
        at,
        run_id,
        source,
        what,
    }
}

/// The fee's life in time order (ties keep the order of the sources above).
pub fn timeline(records: &FeeRecords) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(fee) = &records.fee {
        events.extend(fee_events(fee));
    }
    events.extend(txn_events(records.fee.as_ref(), &records.txns));
    if let Some(link) = &records.link {
        events.extend(link_events(link));
    }
    events.extend(records.audit.iter().map(|a| {
        let detail = a
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        event(
            a.at,
            a.run_id,
            EventSource::Audit,
            format!("{} {}{detail}", a.side, a.action),
        )
    }));
    events.extend(records.discrepancies.iter().map(discrepancy_event));
    events.extend(records.outbox.iter().flat_map(outbox_events));
    events.sort_by_key(|e| e.at);
    events
}

fn fee_events(fee: &GenesisFee) -> Vec<Event> {
    let due = fee
        .due_date
        .map(|d| format!(", due {d}"))
        .unwrap_or_default();
    let mut events = vec![event(
        fee.created_at,
        None,
        EventSource::Genesis,
        format!(
            "created: {} {:?} ${} for student {}, dated {}{due}, school {}",
            fee.category, fee.description, fee.amount, fee.student_id, fee.fee_date, fee.school
        ),
    )];
    if fee.modified_at != fee.created_at {
        events.push(event(
            fee.modified_at,
            None,
            EventSource::Genesis,
            format!("last modified: now ${}, status {}", fee.amount, fee.status),
        ));
    }
    events
}

/// Transactions in posting order, payments told apart by what they leave
/// owing (partial payment, payment in full, over-payment).
fn txn_events(fee: Option<&GenesisFee>, txns: &[GenesisTxn]) -> Vec<Event> {
    let mut ordered: Vec<&GenesisTxn> = txns.iter().collect();
    ordered.sort_by_key(|t| (t.posted_at, t.id));
    let mut owing = fee.map(|f| f.amount);
    ordered
        .into_iter()
        .map(|txn| {
            owing = owing.map(|o| o + txn.kind.balance_effect(txn.amount));
            let label = match (txn.kind, owing) {
                (TxnKind::Payment, Some(o)) if o.is_positive() => "partial payment".to_string(),
                (TxnKind::Payment, Some(o)) if o.is_negative() => "over-payment".to_string(),
                (TxnKind::Payment, Some(_)) => "payment in full".to_string(),
                (kind, _) => kind.to_string(),
            };
            let vendor = txn
                .vendor_txn_id
                .as_ref()
                .map(|v| format!(", Community Pass transaction {v}"))
                .unwrap_or_default();
            let left = owing
                .map(|o| format!("; ${o} owing after"))
                .unwrap_or_default();
            event(
                txn.posted_at,
                None,
                EventSource::Genesis,
                format!(
                    "{label} of ${} by {} (source {}{vendor}){left}",
                    txn.amount, txn.method, txn.source
                ),
            )
        })
        .collect()
}

fn link_events(link: &LinkDetail) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(at) = link.first_sent_at {
        events.push(event(
            at,
            None,
            EventSource::Link,
            format!(
                "first sent to Community Pass as {}",
                link.vendor_fee_id.as_deref().unwrap_or("(no vendor id)")
            ),
        ));
    }
    if let Some(at) = link.last_pushed_at {
        let cents = |c: Option<i64>| c.map(|c| format!("${}", Money::from_cents(c)));
        // No run id here: the link's last run may be a later lock; the
        // audit row of each push carries its own run id.
        events.push(event(
            at,
            None,
            EventSource::Link,
            format!(
                "last pushed: amount {}, Genesis credit {}, status {}",
                cents(link.pushed_amount_cents).unwrap_or_else(|| "?".into()),
                cents(link.pushed_credit_cents).unwrap_or_else(|| "?".into()),
                link.pushed_status.as_deref().unwrap_or("?")
            ),
        ));
    }
    if let (true, Some(at)) = (link.amount_locked, link.locked_at) {
        events.push(event(
            at,
            None,
            EventSource::Link,
            format!(
                "amount locked (read-only) by Community Pass transaction {}",
                link.locked_by_vendor_txn.as_deref().unwrap_or("(unknown)")
            ),
        ));
    }
    events
}

fn discrepancy_event(d: &StoredDiscrepancy) -> Event {
    let side = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let reason = d
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    event(
        d.created_at,
        Some(d.run_id),
        EventSource::Reconciliation,
        format!(
            "{} (Genesis {}, Community Pass {}) -> {}{reason}",
            d.kind,
            side(&d.genesis_value),
            side(&d.cp_value),
            d.resolution
        ),
    )
}

fn outbox_events(entry: &OutboxRecord) -> Vec<Event> {
    let note = entry
        .last_error
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let mut events = vec![event(
        entry.enqueued_at,
        None,
        EventSource::Outbox,
        format!("change queued: {}", entry.reason),
    )];
    match entry.processed_at {
        Some(at) => events.push(event(
            at,
            entry.run_id,
            EventSource::Outbox,
            format!("change handled{note}"),
        )),
        None if entry.attempts > 0 => events.push(event(
            entry.enqueued_at,
            entry.run_id,
            EventSource::Outbox,
            format!(
                "change still waiting after {} failed attempt(s){note}",
                entry.attempts
            ),
        )),
        None => {}
    }
    events
}

fn gather(conn: &mut DbConnection, fee_id: FeeId) -> anyhow::Result<FeeRecords> {
    let fees = genesis::load_fees_by_ids(conn, &[fee_id])?;
    let txns = genesis::load_txns_for_fees(conn, &[fee_id])?;
    for rejected in fees.rejected.iter().chain(&txns.rejected) {
        eprintln!(
            "cpsync: warning: a Genesis row breaks the contract and is not shown: {rejected}"
        );
    }
    Ok(FeeRecords {
        fee: fees.records.into_iter().next(),
        txns: txns.records,
        link: links::detail(conn, fee_id)?,
        audit: audit::for_entity(conn, "fee", &fee_id.to_string())?,
        discrepancies: discrepancies::for_fee(conn, fee_id.0)?,
        outbox: outbox::for_fee(conn, fee_id)?,
    })
}

#[derive(Serialize)]
struct JsonHistory<'a> {
    fee_id: FeeId,
    fee: Option<&'a GenesisFee>,
    balance: Option<Money>,
    link: Option<&'a LinkDetail>,
    events: &'a [Event],
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<u8> {
    let mut conn = context.connect()?;
    let records = gather(&mut conn, args.fee_id)?;
    if records.is_empty() {
        bail!(
            "fee {} is unknown: neither Genesis nor the integration has a record of it",
            args.fee_id
        );
    }
    let events = timeline(&records);
    let balance = records
        .fee
        .as_ref()
        .map(|f| fee_balance(f, &records.txns.iter().collect::<Vec<_>>()));
    if args.json {
        let history = JsonHistory {
            fee_id: args.fee_id,
            fee: records.fee.as_ref(),
            balance,
            link: records.link.as_ref(),
            events: &events,
        };
        out!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(exit::OK);
    }
    print_header(args.fee_id, &records, balance);
    for e in &events {
        let run = e.run_id.map(|r| format!("run {r}")).unwrap_or_default();
        out!(
            "{}  {:<9} {:<9} {}",
            e.at.format("%Y-%m-%d %H:%M:%S"),
            run,
            e.source.as_str(),
            e.what
        );
    }
    Ok(exit::OK)
}

fn print_header(fee_id: FeeId, records: &FeeRecords, balance: Option<Money>) {
    match (&records.fee, balance) {
        (Some(fee), Some(balance)) => out!(
            "fee {fee_id}: {} {:?}, student {}, ${} ({}), ${balance} owing",
            fee.category,
            fee.description,
            fee.student_id,
            fee.amount,
            fee.status
        ),
        _ => out!("fee {fee_id}: no longer in Genesis (deleted); its history follows"),
    }
    let sent = records
        .link
        .as_ref()
        .and_then(|l| l.vendor_fee_id.clone())
        .map(|v| format!("in Community Pass as {v}"))
        .unwrap_or_else(|| "never sent to Community Pass".into());
    let locked = if records.link.as_ref().is_some_and(|l| l.amount_locked) {
        "; amount read-only (paid in Community Pass)"
    } else {
        ""
    };
    out!("{sent}{locked}");
    out!("times in UTC");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FeeStatus, StudentId, TxnSource, VendorTxnId};
    use chrono::NaiveDate;

    fn at(day: u32, hour: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 9, day)
            .unwrap()
            .and_hms_opt(hour, 0, 0)
            .unwrap()
    }

    fn fee() -> GenesisFee {
        GenesisFee {
            id: FeeId(7),
            student_id: StudentId(100_001),
            category: "LAB".into(),
            school: "HS01".into(),
            description: "Lab fee".into(),
            amount: Money::from_cents(5_000),
            fee_date: at(1, 8).date(),
            due_date: None,
            status: FeeStatus::Open,
            created_at: at(1, 8),
            modified_at: at(3, 9),
        }
    }

    fn txn(id: i64, kind: TxnKind, cents: i64, posted: NaiveDateTime) -> GenesisTxn {
        GenesisTxn {
            id,
            fee_id: FeeId(7),
            kind,
            amount: Money::from_cents(cents),
            method: "card".into(),
            source: TxnSource::CommunityPass,
            vendor_txn_id: Some(VendorTxnId(format!("CPT{id}"))),
            posted_at: posted,
        }
    }

    #[test]
    fn the_timeline_is_in_time_order_and_names_partial_payments() {
        let records = FeeRecords {
            fee: Some(fee()),
            txns: vec![
                txn(2, TxnKind::Payment, 3_000, at(5, 10)),
                txn(1, TxnKind::Payment, 2_000, at(4, 10)),
                txn(3, TxnKind::Refund, 500, at(6, 10)),
            ],
            outbox: vec![OutboxRecord {
                id: 1,
                fee_id: 7,
                reason: "fee_insert".into(),
                enqueued_at: at(1, 8),
                processed_at: Some(at(1, 9)),
                attempts: 0,
                last_error: None,
                run_id: Some(12),
            }],
            ..FeeRecords::default()
        };
        let events = timeline(&records);
        let times: Vec<NaiveDateTime> = events.iter().map(|e| e.at).collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted);
        let texts: Vec<&str> = events.iter().map(|e| e.what.as_str()).collect();
        assert!(texts[0].starts_with("created"), "{texts:?}");
        assert!(texts
            .iter()
            .any(|t| t.starts_with("partial payment of $20.00")));
        assert!(texts
            .iter()
            .any(|t| t.starts_with("payment in full of $30.00")));
        assert!(texts
            .iter()
            .any(|t| t.starts_with("refund of $5.00") && t.ends_with("$5.00 owing after")));
        let handled = events.iter().find(|e| e.what == "change handled").unwrap();
        assert_eq!(handled.run_id, Some(12));
    }

    #[test]
    fn a_deleted_fee_still_has_its_history() {
        let records = FeeRecords {
            txns: vec![txn(1, TxnKind::Payment, 2_000, at(4, 10))],
            ..FeeRecords::default()
        };
        assert!(!records.is_empty());
        let events = timeline(&records);
        assert_eq!(events.len(), 1);
        assert!(
            events[0].what.starts_with("payment of $20.00"),
            "{events:?}"
        );
        assert!(FeeRecords::default().is_empty());
    }
}
