//! The invariants checked once a scenario has finished with the faults off.
//! Each check reads both sides directly (the database tables and the
//! vendor's own listings), not the engine's summaries, so it cannot agree
//! with the engine by construction.

use std::collections::{BTreeMap, HashMap, HashSet};

use diesel::prelude::*;

use cpsync::db::schema::{
    cp_audit_log, cp_fee_links, cp_runs, cp_unprocessed, fee_transactions, student_fees,
};
use cpsync::domain::{TxnKind, VendorFee, VendorFeeStatus, VendorTxn, VendorTxnId};
use cpsync::money::Money;
use cpsync::portal::{
    all_unmanaged_fees, transactions_after, CommunityPass, FeeFilter, TxnScope, PAGES_MAX,
};

use crate::tally::ScenarioResult;
use crate::world::World;

/// One Genesis row posted from a vendor transaction.
#[derive(Debug, Queryable)]
struct Posting {
    fee_id: i64,
    kind: String,
    amount_cents: i64,
    source: String,
    vendor_txn_id: Option<String>,
}

/// One audit row.
#[derive(Debug, Queryable)]
struct Audit {
    run_id: Option<i64>,
    side: String,
    entity_id: String,
    action: String,
    detail: Option<String>,
}

/// Everything the checks read, once.
struct Sides {
    vendor_txns: Vec<VendorTxn>,
    vendor_fees: Vec<VendorFee>,
    unmanaged_fees: usize,
    /// Genesis fee id → its student now.
    genesis_fees: HashMap<i64, i64>,
    postings: Vec<Posting>,
    parked: HashSet<String>,
    links: HashMap<i64, Option<String>>,
    audit: Vec<Audit>,
    runs: HashSet<i64>,
}

/// Every vendor fee page, without the client's deduplication: a fee the
/// vendor holds twice must show up here.
fn raw_vendor_fees(world: &World) -> anyhow::Result<Vec<VendorFee>> {
    let mut fees = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..PAGES_MAX {
        let page = world.portal.fees_page(FeeFilter::All, cursor.as_deref())?;
        fees.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(fees),
        }
    }
    anyhow::bail!("the vendor fee listing has more than {PAGES_MAX} pages")
}

fn read_sides(world: &World) -> anyhow::Result<Sides> {
    let mut conn = world.connect()?;
    let postings = fee_transactions::table
        .select((
            fee_transactions::fee_id,
            fee_transactions::kind,
            fee_transactions::amount_cents,
            fee_transactions::source,
            fee_transactions::vendor_txn_id,
        ))
        .load::<Posting>(&mut conn)?;
    // A held record counts only with a reason in words.
    let parked = cp_unprocessed::table
        .filter(cp_unprocessed::resolved_at.is_null())
        .filter(cp_unprocessed::reason.ne(""))
        .select(cp_unprocessed::vendor_txn_id)
        .load::<String>(&mut conn)?;
    let links = cp_fee_links::table
        .select((cp_fee_links::fee_id, cp_fee_links::vendor_fee_id))
        .load::<(i64, Option<String>)>(&mut conn)?;
    let audit = cp_audit_log::table
        .filter(cp_audit_log::entity.eq("fee"))
        .select((
            cp_audit_log::run_id,
            cp_audit_log::side,
            cp_audit_log::entity_id,
            cp_audit_log::action,
            cp_audit_log::detail,
        ))
        .load::<Audit>(&mut conn)?;
    Ok(Sides {
        vendor_txns: transactions_after(&world.portal, TxnScope::All, 0)?.items,
        vendor_fees: raw_vendor_fees(world)?,
        unmanaged_fees: all_unmanaged_fees(&world.portal)?.len(),
        genesis_fees: student_fees::table
            .select((student_fees::id, student_fees::student_id))
            .load::<(i64, i64)>(&mut conn)?
            .into_iter()
            .collect(),
        postings,
        parked: parked.into_iter().collect(),
        links: links.into_iter().collect(),
        audit,
        runs: cp_runs::table
            .select(cp_runs::id)
            .load::<i64>(&mut conn)?
            .into_iter()
            .collect(),
    })
}

/// What the scenario itself knows the finish must show.
pub struct Expectations<'a> {
    /// Injected vendor records that must be held with a reason, never
    /// posted, each with what is wrong with it.
    pub held: &'a [(VendorTxnId, &'static str)],
    /// The student each fee had when it was first sent (a vendor record
    /// may name it, or the fee's student now, and no other).
    pub sent_students: HashMap<i64, i64>,
}

/// Runs every check; violations go into `result`.
pub fn all(
    world: &World,
    final_nightly: serde_json::Value,
    expectations: &Expectations<'_>,
    result: &mut ScenarioResult,
) -> anyhow::Result<()> {
    let sides = read_sides(world)?;
    result.vendor_txns_checked = sides.vendor_txns.len() as u64;
    result.vendor_fees_checked = sides.vendor_fees.len() as u64;
    let mut found = Vec::new();
    posted_exactly_once(&sides, &mut found);
    posted_where_it_belongs(&sides, &expectations.sent_students, &mut found);
    result.bad_vendor_records_held = held_never_posted(&sides, expectations.held, &mut found);
    no_fee_created_twice(&sides, 2 + result.unmanaged_injected, &mut found);
    vendor_conservation(&sides, &mut found);
    genesis_agrees_in_dollars(&sides, &mut found);
    audit_complete(&sides, &mut found);
    result.fees_compared = fees_agree_field_by_field(world, &sides, &mut found)?;
    if final_nightly["status"] == "failed" {
        found.push(format!(
            "the final nightly failed: {}",
            final_nightly["failures"]
        ));
    }
    result.violations.extend(found);
    Ok(())
}

/// Every vendor transaction whose fee exists in Genesis is posted once, on
/// that fee, with its kind and amount; the others are parked, not lost;
/// nothing is posted that the vendor does not have.
fn posted_exactly_once(sides: &Sides, found: &mut Vec<String>) {
    let mut by_vendor_id: HashMap<&str, Vec<&Posting>> = HashMap::new();
    for posting in &sides.postings {
        if let Some(id) = &posting.vendor_txn_id {
            by_vendor_id.entry(id).or_default().push(posting);
        }
    }
    for (id, postings) in &by_vendor_id {
        if postings.len() > 1 {
            found.push(format!(
                "vendor transaction {id} posted {} times",
                postings.len()
            ));
        }
    }
    let vendor_ids: HashSet<&str> = sides.vendor_txns.iter().map(|t| t.id.0.as_str()).collect();
    for id in by_vendor_id.keys().filter(|id| !vendor_ids.contains(*id)) {
        found.push(format!(
            "Genesis holds vendor transaction {id}, which the vendor does not have"
        ));
    }
    for txn in &sides.vendor_txns {
        let Some(fee) = txn.genesis_fee_id else {
            continue;
        };
        let postings = by_vendor_id
            .get(txn.id.0.as_str())
            .map_or(&[][..], Vec::as_slice);
        match postings {
            // Held for a person with a reason (it does not belong as it
            // stands: a fee moved to another student, say): kept, not lost.
            [] if sides.parked.contains(&txn.id.0) => {}
            [] if sides.genesis_fees.contains_key(&fee.0) => found.push(format!(
                "vendor {} {} on fee {fee} was neither posted nor held",
                txn.kind, txn.id
            )),
            [] if !sides.parked.contains(&txn.id.0) => found.push(format!(
                "vendor {} {} on fee {fee} (not in Genesis) is neither posted nor parked",
                txn.kind, txn.id
            )),
            [] => {}
            [posting, ..] => {
                let same = posting.fee_id == fee.0
                    && posting.kind == txn.kind.as_str()
                    && posting.amount_cents == txn.amount.cents()
                    && posting.source == "community_pass";
                if !same {
                    found.push(format!(
                        "vendor {} {} posted as {posting:?}",
                        txn.kind, txn.id
                    ));
                }
            }
        }
    }
}

/// Every posting from Community Pass is on the fee its record names, for a
/// student that fee has (or had when it was sent), under the vendor fee id
/// its link knows: nothing posted to the wrong fee or student.
fn posted_where_it_belongs(
    sides: &Sides,
    sent_students: &HashMap<i64, i64>,
    found: &mut Vec<String>,
) {
    let records: HashMap<&str, &VendorTxn> = sides
        .vendor_txns
        .iter()
        .map(|t| (t.id.0.as_str(), t))
        .collect();
    for posting in &sides.postings {
        let Some(id) = &posting.vendor_txn_id else {
            continue;
        };
        let Some(record) = records.get(id.as_str()) else {
            continue; // `posted_exactly_once` reports it
        };
        let Some(now) = sides.genesis_fees.get(&posting.fee_id) else {
            continue;
        };
        let named = record.student_id.map(|s| s.0);
        let known = [Some(*now), sent_students.get(&posting.fee_id).copied()];
        if named.is_some() && !known.contains(&named) {
            found.push(format!(
                "vendor {} {id} names student {named:?} but was posted on fee {} of student {now}",
                record.kind, posting.fee_id
            ));
        }
        let linked = sides.links.get(&posting.fee_id).cloned().flatten();
        if linked.as_deref().is_some_and(|v| v != record.vendor_fee_id) {
            found.push(format!(
                "vendor {} {id} names vendor fee {} but was posted on fee {} linked to {linked:?}",
                record.kind, record.vendor_fee_id, posting.fee_id
            ));
        }
    }
}

/// Each injected record that does not belong is held with a reason and
/// never posted; returns how many were found so.
fn held_never_posted(
    sides: &Sides,
    held: &[(VendorTxnId, &'static str)],
    found: &mut Vec<String>,
) -> u64 {
    let posted: HashSet<&str> = sides
        .postings
        .iter()
        .filter_map(|p| p.vendor_txn_id.as_deref())
        .collect();
    let mut checked = 0;
    for (id, why) in held {
        if posted.contains(id.0.as_str()) {
            found.push(format!("vendor record {id}, which {why}, was posted"));
        } else if !sides.parked.contains(&id.0) {
            found.push(format!(
                "vendor record {id}, which {why}, is not held with a reason"
            ));
        } else {
            checked += 1;
        }
    }
    checked
}

/// The vendor holds each Genesis fee once, and it is the one the link names.
fn no_fee_created_twice(sides: &Sides, unmanaged_max: u64, found: &mut Vec<String>) {
    let mut genesis_ids = HashSet::new();
    let mut vendor_ids = HashSet::new();
    for fee in &sides.vendor_fees {
        if !genesis_ids.insert(fee.genesis_fee_id) {
            found.push(format!(
                "the vendor holds Genesis fee {} twice",
                fee.genesis_fee_id
            ));
        }
        if !vendor_ids.insert(fee.vendor_fee_id.clone()) {
            found.push(format!("vendor fee id {} appears twice", fee.vendor_fee_id));
        }
        match sides.links.get(&fee.genesis_fee_id.0) {
            Some(Some(linked)) if *linked == fee.vendor_fee_id => {}
            other => found.push(format!(
                "fee {} is {} in Community Pass but its link says {other:?}",
                fee.genesis_fee_id, fee.vendor_fee_id
            )),
        }
    }
    // The parents' activity adds one unmanaged fee and one duplicate, the
    // office actions the ones they paid; the engine never creates any.
    if sides.unmanaged_fees as u64 > unmanaged_max {
        found.push(format!(
            "{} unmanaged fees, expected at most {unmanaged_max}",
            sides.unmanaged_fees
        ));
    }
}

/// Sums of a fee's transactions by kind.
fn sums_by_kind<'t>(txns: impl Iterator<Item = (i64, &'t str, i64)>) -> BTreeMap<i64, [i64; 4]> {
    let mut sums: BTreeMap<i64, [i64; 4]> = BTreeMap::new();
    for (fee, kind, cents) in txns {
        let slot = match kind {
            "payment" => 0,
            "waiver" => 1,
            "refund" => 2,
            "reversal" => 3,
            _ => continue,
        };
        sums.entry(fee).or_default()[slot] += cents;
    }
    sums
}

/// The vendor's own sums: a conflicting later copy of an id is evidence,
/// not money (Community Pass applied the first).
fn vendor_sums(sides: &Sides) -> BTreeMap<i64, [i64; 4]> {
    let mut seen = HashSet::new();
    let mut firsts: Vec<&VendorTxn> = sides.vendor_txns.iter().collect();
    firsts.sort_by_key(|t| t.sequence);
    firsts.retain(|t| seen.insert(t.id.0.as_str()));
    sums_by_kind(firsts.into_iter().filter_map(|t| {
        t.genesis_fee_id
            .map(|fee| (fee.0, t.kind.as_str(), t.amount.cents()))
    }))
}

/// Per fee on the vendor side: its totals are the sums of its transaction
/// log, and amount − credit − payments − waivers + refunds + reversals =
/// balance.
fn vendor_conservation(sides: &Sides, found: &mut Vec<String>) {
    let sums = vendor_sums(sides);
    for fee in &sides.vendor_fees {
        let [paid, waived, refunded, reversed] =
            sums.get(&fee.genesis_fee_id.0).copied().unwrap_or_default();
        let totals = [fee.paid, fee.waived, fee.refunded, fee.reversed].map(Money::cents);
        if totals != [paid, waived, refunded, reversed] {
            found.push(format!(
                "vendor fee {} totals {totals:?} differ from its transaction log {:?}",
                fee.genesis_fee_id,
                [paid, waived, refunded, reversed]
            ));
        }
        let identity =
            fee.amount - fee.genesis_credit - fee.paid - fee.waived + fee.refunded + fee.reversed;
        if identity != fee.balance {
            found.push(format!(
                "vendor fee {}: amount − credit − paid − waived + refunded + reversed = {identity}, balance {}",
                fee.genesis_fee_id, fee.balance
            ));
        }
    }
}

/// Per fee still in Genesis, the Community Pass money posted there, kind by
/// kind, is the money the vendor's log holds: no payment lost or doubled.
fn genesis_agrees_in_dollars(sides: &Sides, found: &mut Vec<String>) {
    // Records held for a person (with a reason) are not in Genesis yet.
    let vendor = sums_by_kind(
        sides
            .vendor_txns
            .iter()
            .filter(|t| !sides.parked.contains(&t.id.0))
            .filter_map(|t| {
                t.genesis_fee_id
                    .map(|fee| (fee.0, t.kind.as_str(), t.amount.cents()))
            }),
    );
    let genesis = sums_by_kind(
        sides
            .postings
            .iter()
            .filter(|p| p.source == "community_pass")
            .map(|p| (p.fee_id, p.kind.as_str(), p.amount_cents)),
    );
    for (fee, sums) in &vendor {
        if !sides.genesis_fees.contains_key(fee) {
            continue;
        }
        let posted = genesis.get(fee).copied().unwrap_or_default();
        if posted != *sums {
            found.push(format!(
                "fee {fee}: Community Pass money in Genesis {posted:?} (payments, waivers, refunds, reversals), vendor {sums:?}"
            ));
        }
    }
}

/// Each posted vendor transaction and each fee the vendor holds has its
/// audit row, with the id of a recorded run.
fn audit_complete(sides: &Sides, found: &mut Vec<String>) {
    let with_run = |a: &&Audit| a.run_id.is_some_and(|id| sides.runs.contains(&id));
    let audited_postings: HashSet<(&str, &str)> = sides
        .audit
        .iter()
        .filter(with_run)
        .filter(|a| a.side == "genesis" && a.action.starts_with("posted_"))
        .filter_map(|a| {
            Some((
                a.entity_id.as_str(),
                posted_vendor_id(a.detail.as_deref()?)?,
            ))
        })
        .collect();
    for posting in &sides.postings {
        let Some(id) = &posting.vendor_txn_id else {
            continue;
        };
        let fee = posting.fee_id.to_string();
        if !audited_postings.contains(&(fee.as_str(), id.as_str())) {
            found.push(format!(
                "posting of vendor transaction {id} on fee {fee} has no audit row with a run id"
            ));
        }
    }
    let created: HashSet<&str> = sides
        .audit
        .iter()
        .filter(with_run)
        .filter(|a| a.side == "community_pass" && a.action == "created")
        .map(|a| a.entity_id.as_str())
        .collect();
    for fee in &sides.vendor_fees {
        if !created.contains(fee.genesis_fee_id.to_string().as_str()) {
            found.push(format!(
                "fee {} exists in Community Pass but no audit row records its creation",
                fee.genesis_fee_id
            ));
        }
    }
}

/// The vendor transaction id in a posting's audit detail
/// (`Community Pass payment ID of $...`).
fn posted_vendor_id(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix("Community Pass ")?;
    let kinds = [
        TxnKind::Payment,
        TxnKind::Waiver,
        TxnKind::Refund,
        TxnKind::Reversal,
    ];
    let rest = kinds
        .iter()
        .find_map(|k| rest.strip_prefix(k.as_str()))?
        .trim_start();
    rest.split_whitespace().next()
}

/// One Genesis fee row as the field check reads it.
#[derive(Debug, Queryable)]
struct FeeRow {
    id: i64,
    student_id: i64,
    category_code: String,
    school_code: String,
    description: String,
    amount_cents: i64,
    fee_date: chrono::NaiveDate,
    due_date: Option<chrono::NaiveDate>,
    status: String,
}

/// What the field check needs of a link.
#[derive(Debug, Queryable)]
struct LinkRow {
    fee_id: i64,
    vendor_fee_id: Option<String>,
    amount_locked: bool,
    refused_digest: Option<String>,
}

/// Every fee cpsync sent agrees with Genesis in every field Community Pass
/// shows (student, patron, guardians, category, school, description, dates,
/// amount, office credit, status), and an unpaid fee deleted in Genesis is
/// void there. Exceptions are exactly the handbook's: a fee whose amount or
/// student changed after a Community Pass payment, and a push Community
/// Pass refused (held for a person). Expectations are written here from the
/// rules, not taken from the engine. Returns how many fees were compared.
fn fees_agree_field_by_field(
    world: &World,
    sides: &Sides,
    found: &mut Vec<String>,
) -> anyhow::Result<u64> {
    use cpsync::db::schema::student_guardians;
    let mut conn = world.connect()?;
    let fees: Vec<FeeRow> = student_fees::table
        .select((
            student_fees::id,
            student_fees::student_id,
            student_fees::category_code,
            student_fees::school_code,
            student_fees::description,
            student_fees::amount_cents,
            student_fees::fee_date,
            student_fees::due_date,
            student_fees::status,
        ))
        .load(&mut conn)?;
    let links: HashMap<i64, LinkRow> = cp_fee_links::table
        .select((
            cp_fee_links::fee_id,
            cp_fee_links::vendor_fee_id,
            cp_fee_links::amount_locked,
            cp_fee_links::refused_digest,
        ))
        .load::<LinkRow>(&mut conn)?
        .into_iter()
        .map(|link| (link.fee_id, link))
        .collect();
    let mut credit: HashMap<i64, i64> = HashMap::new();
    let manual: Vec<(i64, String, i64)> = fee_transactions::table
        .filter(fee_transactions::source.eq("genesis"))
        .filter(fee_transactions::vendor_txn_id.is_null())
        .select((
            fee_transactions::fee_id,
            fee_transactions::kind,
            fee_transactions::amount_cents,
        ))
        .load(&mut conn)?;
    for (fee, kind, cents) in manual {
        let signed = if kind == "refund" || kind == "reversal" {
            -cents
        } else {
            cents
        };
        *credit.entry(fee).or_default() += signed;
    }
    let mut guardians: HashMap<i64, Vec<i64>> = HashMap::new();
    for (student, guardian) in student_guardians::table
        .select((
            student_guardians::student_id,
            student_guardians::guardian_id,
        ))
        .load::<(i64, i64)>(&mut conn)?
    {
        guardians.entry(student).or_default().push(guardian);
    }
    for list in guardians.values_mut() {
        list.sort_unstable();
    }
    let vendor: HashMap<i64, &VendorFee> = sides
        .vendor_fees
        .iter()
        .map(|fee| (fee.genesis_fee_id.0, fee))
        .collect();
    let genesis_ids: HashSet<i64> = fees.iter().map(|fee| fee.id).collect();
    // Fees the sending policy no longer covers are frozen: never pushed
    // again, so they may rightly differ (a review item says so).
    let policy = cpsync::db::settings::load_setup(&mut conn)?.policy();
    let frozen: HashSet<i64> = cpsync::db::genesis::load_fees(&mut conn, None)?
        .records
        .iter()
        .filter(|fee| policy.eligibility(fee).is_err())
        .map(|fee| fee.id.0)
        .collect();
    let mut compared = 0;
    for fee in &fees {
        let Some(link) = links.get(&fee.id).filter(|l| l.vendor_fee_id.is_some()) else {
            continue;
        };
        if frozen.contains(&fee.id) {
            continue;
        }
        let Some(shown) = vendor.get(&fee.id) else {
            found.push(format!(
                "fee {}: sent, but Community Pass does not list it",
                fee.id
            ));
            continue;
        };
        let amount = Money::from_cents(fee.amount_cents);
        let moved_after_payment =
            link.amount_locked && (shown.amount != amount || shown.student_id.0 != fee.student_id);
        let voided_after_payment = link.amount_locked && fee.status == "void";
        if link.refused_digest.is_some() || moved_after_payment || voided_after_payment {
            continue; // a review item by the handbook's rules
        }
        compared += 1;
        let expected_guardians = guardians.get(&fee.student_id).cloned().unwrap_or_default();
        let mut shown_guardians: Vec<i64> = shown.guardian_ids.iter().map(|g| g.0).collect();
        shown_guardians.sort_unstable();
        let status_agrees = match fee.status.as_str() {
            "void" => shown.status == VendorFeeStatus::Void,
            "waived" => shown.status == VendorFeeStatus::Waived,
            _ => match shown.status {
                VendorFeeStatus::Open | VendorFeeStatus::Paid => true,
                VendorFeeStatus::Waived => shown.waived.is_positive(),
                VendorFeeStatus::Void => false,
            },
        };
        let expected = (
            fee.student_id,
            fee.student_id.to_string(),
            expected_guardians,
            fee.category_code.as_str(),
            fee.school_code.as_str(),
            fee.description.as_str(),
            fee.fee_date,
            fee.due_date,
            amount,
            Money::from_cents(credit.get(&fee.id).copied().unwrap_or(0)),
        );
        let actual = (
            shown.student_id.0,
            shown.patron_id.clone(),
            shown_guardians,
            shown.category.as_str(),
            shown.school.as_str(),
            shown.description.as_str(),
            shown.fee_date,
            shown.due_date,
            shown.amount,
            shown.genesis_credit,
        );
        if expected != actual || !status_agrees {
            found.push(format!(
                "fee {}: Genesis says {expected:?} status {}, Community Pass shows {actual:?} status {}",
                fee.id, fee.status, shown.status
            ));
        }
    }
    for (id, link) in &links {
        let Some(shown) = vendor.get(id) else {
            continue;
        };
        let untouched = !link.amount_locked
            && !shown.paid.is_positive()
            && !shown.waived.is_positive()
            && !shown.refunded.is_positive()
            && !shown.reversed.is_positive();
        let sent = link.vendor_fee_id.is_some();
        if sent && !genesis_ids.contains(id) && untouched && shown.status != VendorFeeStatus::Void {
            found.push(format!(
                "fee {id}: deleted in Genesis with nothing paid, but Community Pass still bills it ({})",
                shown.status
            ));
        }
    }
    Ok(compared)
}
