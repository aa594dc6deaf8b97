//! The Community Pass port: the one trait the engine uses to reach the payment
//! portal, its typed errors, paging helpers that read every record exactly
//! once, and the idempotency key of a fee upsert (one key per intended
//! write, never just per body).
//!
//! **Architecture invariant:** nothing outside `portal::http` knows HTTP or
//! JSON; adapting to the vendor's real API is a change to that one module.
//! The contract it assumes is `api/community-pass.openapi.yaml`.

mod body_reader;
pub mod http;

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::NaiveDateTime;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{
    FeeId, FeePush, GuardianId, PatronBalance, StudentId, UnmanagedFee, VendorFee, VendorFeeStatus,
    VendorTxn, VendorTxnId,
};
use crate::money::Money;

/// The largest page the API serves (and the client asks for).
pub const PAGE_SIZE_MAX: u32 = 1000;
/// The page size used when none is configured.
pub const PAGE_SIZE_DEFAULT: u32 = 500;
/// The most fee ids one listing call filters on (`genesis_fee_ids`).
pub const FEE_IDS_PER_REQUEST_MAX: usize = 500;
/// The most pages one full walk reads before it gives up: ten million
/// records at the largest page size, far above any district.
pub const PAGES_MAX: usize = 10_000;
/// The most items one page may carry: twice the largest page the API
/// serves (room for redelivered copies). A server that ignores `limit` is
/// an error naming this bound, not a slow death by memory.
pub const PAGE_ITEMS_MAX: usize = 2 * PAGE_SIZE_MAX as usize;
/// The most records one listing (fees, transactions, balances) may hold:
/// ten times the largest district seen (450,000 fees), about 2.5 GB at
/// most in memory.
pub const LISTING_RECORDS_MAX: usize = 5_000_000;

/// Checks one page against `PAGE_ITEMS_MAX` and the listing so far against
/// `LISTING_RECORDS_MAX`.
fn check_bounds(listing: &str, page_items: usize, so_far: usize) -> Result<(), PortalError> {
    if page_items > PAGE_ITEMS_MAX {
        return Err(PortalError::protocol(
            listing,
            format!("a page of {page_items} items exceeds PAGE_ITEMS_MAX = {PAGE_ITEMS_MAX} (the server ignores the page limit)"),
        ));
    }
    if so_far + page_items > LISTING_RECORDS_MAX {
        return Err(PortalError::protocol(
            listing,
            format!("more than LISTING_RECORDS_MAX = {LISTING_RECORDS_MAX} records"),
        ));
    }
    Ok(())
}

/// Why a Community Pass call failed. No variant ever carries the API key:
/// messages from the server are scrubbed of it before they land here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortalError {
    #[error("Community Pass refused the credentials (401 {code}): {message}")]
    Unauthorized { code: String, message: String },
    #[error("Community Pass has no {what} (404 {code}): {message}")]
    NotFound {
        what: String,
        code: String,
        message: String,
    },
    #[error("Community Pass reported a conflict (409 {code}): {message}")]
    Conflict { code: String, message: String },
    #[error("Community Pass rejected the request ({status} {code}): {message}")]
    Validation {
        status: u16,
        code: String,
        message: String,
    },
    #[error("Community Pass is rate limiting (429), retry after {retry_after:?}: {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("Community Pass is unavailable: {detail}")]
    Unavailable { detail: String },
    #[error("Community Pass did not answer in time: {detail}")]
    Timeout { detail: String },
    #[error("Community Pass sent something the contract does not allow for {record}: {detail}")]
    Protocol { record: String, detail: String },
    #[error("Community Pass client is misconfigured: {detail}")]
    Config { detail: String },
}

impl PortalError {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PortalError::RateLimited { .. }
                | PortalError::Unavailable { .. }
                | PortalError::Timeout { .. }
        )
    }

    pub fn protocol(record: impl Into<String>, detail: impl Into<String>) -> PortalError {
        PortalError::Protocol {
            record: record.into(),
            detail: detail.into(),
        }
    }
}

/// Why a request was retried; `RetryStats` counts retries by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    ServerError,
    RateLimited,
    Timeout,
    Connection,
}

/// Retries made so far, by cause, plus the requests sent (first attempts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryStats {
    pub requests: u64,
    pub server_error: u64,
    pub rate_limited: u64,
    pub timeout: u64,
    pub connection: u64,
}

impl RetryStats {
    pub fn retries(&self) -> u64 {
        self.server_error + self.rate_limited + self.timeout + self.connection
    }
}

/// Thread-safe counters behind `RetryStats`, shared by overlapped calls.
#[derive(Debug, Default)]
pub struct RetryCounter {
    requests: AtomicU64,
    server_error: AtomicU64,
    rate_limited: AtomicU64,
    timeout: AtomicU64,
    connection: AtomicU64,
}

impl RetryCounter {
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_retry(&self, cause: RetryCause) {
        let counter = match cause {
            RetryCause::ServerError => &self.server_error,
            RetryCause::RateLimited => &self.rate_limited,
            RetryCause::Timeout => &self.timeout,
            RetryCause::Connection => &self.connection,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RetryStats {
        RetryStats {
            requests: self.requests.load(Ordering::Relaxed),
            server_error: self.server_error.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            timeout: self.timeout.load(Ordering::Relaxed),
            connection: self.connection.load(Ordering::Relaxed),
        }
    }
}

/// One page of a cursor-paged listing; `next_cursor` is `None` on the last.
/// Records that break the contract are set aside in `rejected`, so one bad
/// fee or balance does not hide the rest of the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
    #[serde(default)]
    pub rejected: Vec<RejectedRecord>,
}

/// Every record of a listing, each once, and the records set aside (each
/// once) because they break the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub rejected: Vec<RejectedRecord>,
}

impl<T> Listing<T> {
    /// The items, or the first rejected record as an error (for the callers
    /// that cannot go on without every record).
    pub fn complete(self, listing: &str) -> Result<Vec<T>, PortalError> {
        match self.rejected.into_iter().next() {
            None => Ok(self.items),
            Some(record) => Err(PortalError::protocol(
                record.record,
                format!("{} (in the {listing})", record.reason),
            )),
        }
    }
}

/// One page of the monotonic transaction cursor. `next_after` is the
/// sequence to ask after next; every item has `sequence <= next_after`.
/// Items that break the contract are set aside in `rejected`, so one bad
/// record does not stop the rest of the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnPage {
    pub items: Vec<VendorTxn>,
    pub next_after: i64,
    pub has_more: bool,
    #[serde(default)]
    pub rejected: Vec<RejectedRecord>,
}

/// The most characters of a rejected record kept as received.
pub const RAW_RECORD_CHARS_MAX: usize = 2_000;

/// A record Community Pass sent that breaks the contract (a malformed
/// amount, a missing field, an oversized value), kept for the business
/// office with the reason instead of stopping the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// What it is, e.g. `transaction T123`.
    pub record: String,
    /// The vendor's id for it, when it carries a readable one.
    pub id: Option<String>,
    pub reason: String,
    /// The record as received, cut to `RAW_RECORD_CHARS_MAX` characters.
    pub raw: String,
}

impl std::fmt::Display for RejectedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.record, self.reason)
    }
}

/// Whose transactions to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnScope<'a> {
    All,
    Student(StudentId),
    Guardian(GuardianId),
    /// The transactions of these fees (at most `FEE_IDS_PER_REQUEST_MAX`).
    Fees(&'a [FeeId]),
}

/// Which integration fees a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeFilter<'a> {
    All,
    Student(StudentId),
    /// These fees (at most `FEE_IDS_PER_REQUEST_MAX`).
    Ids(&'a [FeeId]),
    /// The fees whose record changed at or after this server time.
    UpdatedSince(NaiveDateTime),
}

/// The answer to a connection test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCheck {
    pub district: String,
    pub server_time: NaiveDateTime,
    /// For the test push: the nonce the server echoed back.
    pub echo: Option<String>,
}

/// What Community Pass answered to a fee upsert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertOutcome {
    pub genesis_fee_id: FeeId,
    pub vendor_fee_id: String,
    /// True when this call created the fee, false when it updated it.
    pub created: bool,
    pub amount: Money,
    pub balance: Money,
    pub status: VendorFeeStatus,
    /// Community Pass's revision of the fee after this push.
    #[serde(default)]
    pub revision: i64,
    /// True when the server answered from its idempotency store (the
    /// `Idempotent-Replayed` header; never part of the body).
    #[serde(skip)]
    pub replayed: bool,
}

/// The Community Pass API as the engine needs it. Implementations retry
/// transient failures themselves; an error returned here is final.
pub trait CommunityPass: Send + Sync {
    /// Read-only connection test.
    fn test_pull(&self) -> Result<ConnectionCheck, PortalError>;
    /// Harmless write test: the server echoes a nonce and keeps nothing.
    fn test_push(&self) -> Result<ConnectionCheck, PortalError>;
    /// Creates or updates the fee keyed by its Genesis id. Use
    /// `intent_key` of the intent recorded first, so a retry after a crash
    /// reuses the key.
    fn upsert_fee(
        &self,
        fee: &FeePush,
        idempotency_key: &str,
    ) -> Result<UpsertOutcome, PortalError>;
    /// Creates or updates several fees, each under its own idempotency key
    /// (as `upsert_fee`), at most `upsert_batch_max()` of them; one result
    /// per item, in order. By default one `upsert_fee` after another.
    fn upsert_fees(&self, items: &[(&FeePush, &str)]) -> Vec<Result<UpsertOutcome, PortalError>> {
        items
            .iter()
            .map(|(fee, key)| self.upsert_fee(fee, key))
            .collect()
    }
    /// How many fees one `upsert_fees` call carries at most (1: the client
    /// has no batch write, and pushes are spread over threads instead).
    fn upsert_batch_max(&self) -> usize {
        1
    }
    /// One integration fee; `NotFound` if Community Pass does not have it.
    fn fee(&self, id: FeeId) -> Result<VendorFee, PortalError>;
    /// One page of the integration fees the filter selects.
    fn fees_page(
        &self,
        filter: FeeFilter<'_>,
        cursor: Option<&str>,
    ) -> Result<Page<VendorFee>, PortalError>;
    /// One page of fees Genesis did not create (for the preflight).
    fn unmanaged_fees_page(&self, cursor: Option<&str>) -> Result<Page<UnmanagedFee>, PortalError>;
    /// One page of the transaction cursor, strictly after `after`.
    fn transactions_page(&self, scope: TxnScope<'_>, after: i64) -> Result<TxnPage, PortalError>;
    /// One page of patron balances.
    fn balances_page(&self, cursor: Option<&str>) -> Result<Page<PatronBalance>, PortalError>;
    /// Retries made so far by this client, by cause.
    fn retry_stats(&self) -> RetryStats;
}

/// The digest of a fee push's content (lowercase hex SHA-256 of its
/// canonical body): what the link records as pushed, so "unchanged" means
/// every field Community Pass shows is as Genesis says now.
pub fn push_digest(fee: &FeePush) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"cpsync/fee-upsert/v2\0");
    hasher.update(canonical_body(fee));
    hex(&hasher.finalize())
}

/// The idempotency key of one intended write: the fee, the link's intent
/// sequence number and the content digest. A retry of the same intent (a
/// lost answer, a crash before the answer was recorded) reuses the key and
/// is answered as a replay; a new intent gets a new sequence number, so a
/// push whose body equals an earlier one (A → B → A) is applied.
pub fn intent_key(fee_id: FeeId, intent_seq: i64, digest: &str) -> String {
    let short = &digest[..digest.len().min(16)];
    format!("fee-{fee_id}-{intent_seq}-{short}")
}

/// The canonical JSON of a fee push: struct fields in declaration order,
/// amounts as two-place decimal strings, guardians as given.
pub fn canonical_body(fee: &FeePush) -> Vec<u8> {
    serde_json::to_vec(fee).expect("a FeePush always serializes")
}

/// Lowercase hexadecimal of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    text
}

/// Reads every page of a cursor-paged listing, at most `PAGES_MAX` pages,
/// keeping the first copy of each key: a record the server repeats is
/// returned once. A cursor that repeats is a protocol error, not a loop.
pub fn walk_pages<T, K, F, G>(listing: &str, fetch: F, key: G) -> Result<Vec<T>, PortalError>
where
    F: FnMut(Option<&str>) -> Result<Page<T>, PortalError>,
    G: Fn(&T) -> K,
    K: Eq + Hash,
{
    walk_pages_keeping_rejected(listing, fetch, key)?.complete(listing)
}

/// `walk_pages`, setting aside the records that break the contract
/// instead of failing on the first.
pub fn walk_pages_keeping_rejected<T, K, F, G>(
    listing: &str,
    mut fetch: F,
    key: G,
) -> Result<Listing<T>, PortalError>
where
    F: FnMut(Option<&str>) -> Result<Page<T>, PortalError>,
    G: Fn(&T) -> K,
    K: Eq + Hash,
{
    let mut items = Vec::new();
    let mut rejected: Vec<RejectedRecord> = Vec::new();
    // Fx: the keys come from the authenticated vendor API; SipHash showed
    // in profiles of the 450,000-fee listing.
    let mut seen = FxHashSet::default();
    let mut cursors_seen = HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..PAGES_MAX {
        let page = fetch(cursor.as_deref())?;
        check_bounds(
            listing,
            page.items.len() + page.rejected.len(),
            items.len() + rejected.len(),
        )?;
        for item in page.items {
            if seen.insert(key(&item)) {
                items.push(item);
            }
        }
        for record in page.rejected {
            if !rejected.contains(&record) {
                rejected.push(record);
            }
        }
        match page.next_cursor {
            None => return Ok(Listing { items, rejected }),
            Some(next) if !cursors_seen.insert(next.clone()) => {
                return Err(PortalError::protocol(
                    listing,
                    format!("cursor {next:?} was returned twice"),
                ));
            }
            Some(next) => cursor = Some(next),
        }
    }
    Err(PortalError::protocol(
        listing,
        format!("more than PAGES_MAX = {PAGES_MAX} pages"),
    ))
}

/// Every integration fee (of one student, or all), each exactly once.
pub fn all_fees(
    portal: &dyn CommunityPass,
    student: Option<StudentId>,
) -> Result<Vec<VendorFee>, PortalError> {
    fees_where(portal, student.map_or(FeeFilter::All, FeeFilter::Student))
}

/// Every integration fee the filter selects, each exactly once.
pub fn fees_where(
    portal: &dyn CommunityPass,
    filter: FeeFilter<'_>,
) -> Result<Vec<VendorFee>, PortalError> {
    walk_pages(
        "fee listing",
        |cursor| portal.fees_page(filter, cursor),
        |fee| fee.genesis_fee_id,
    )
}

/// Every integration fee the filter selects, each exactly once, and the fee
/// records set aside because they break the contract (by id and reason).
pub fn fees_where_keeping_rejected(
    portal: &dyn CommunityPass,
    filter: FeeFilter<'_>,
) -> Result<Listing<VendorFee>, PortalError> {
    walk_pages_keeping_rejected(
        "fee listing",
        |cursor| portal.fees_page(filter, cursor),
        |fee| fee.genesis_fee_id,
    )
}

/// Every patron balance, each exactly once, and the balance records set
/// aside because they break the contract.
pub fn all_balances_keeping_rejected(
    portal: &dyn CommunityPass,
) -> Result<Listing<PatronBalance>, PortalError> {
    walk_pages_keeping_rejected(
        "balance listing",
        |cursor| portal.balances_page(cursor),
        |balance| balance.patron_id.clone(),
    )
}

/// `fees_by_ids`, setting malformed fee records aside instead of failing.
pub fn fees_by_ids_keeping_rejected(
    portal: &dyn CommunityPass,
    ids: &[FeeId],
) -> Result<Listing<VendorFee>, PortalError> {
    let mut all = Listing {
        items: Vec::with_capacity(ids.len()),
        rejected: Vec::new(),
    };
    for chunk in ids.chunks(FEE_IDS_PER_REQUEST_MAX) {
        let listing = fees_where_keeping_rejected(portal, FeeFilter::Ids(chunk))?;
        all.items.extend(listing.items);
        all.rejected.extend(listing.rejected);
    }
    Ok(all)
}

/// The Genesis fee id a rejected fee record names, when readable.
pub fn rejected_fee_id(record: &RejectedRecord) -> Option<FeeId> {
    record
        .id
        .as_deref()
        .and_then(|id| id.parse().ok())
        .map(FeeId)
}

/// The fees Community Pass holds among `ids` (any number: asked for
/// `FEE_IDS_PER_REQUEST_MAX` at a time), each exactly once.
pub fn fees_by_ids(
    portal: &dyn CommunityPass,
    ids: &[FeeId],
) -> Result<Vec<VendorFee>, PortalError> {
    let mut fees = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(FEE_IDS_PER_REQUEST_MAX) {
        fees.extend(fees_where(portal, FeeFilter::Ids(chunk))?);
    }
    Ok(fees)
}

/// Every transaction of these fees (any number of them), each exactly once,
/// in sequence order; records breaking the contract are set aside.
pub fn transactions_of_fees(
    portal: &dyn CommunityPass,
    ids: &[FeeId],
) -> Result<TxnBatch, PortalError> {
    let mut all = TxnBatch::empty(0);
    for chunk in ids.chunks(FEE_IDS_PER_REQUEST_MAX) {
        all.merge(transactions_after(portal, TxnScope::Fees(chunk), 0)?);
    }
    all.items.sort_by_key(|txn| txn.sequence);
    Ok(all)
}

/// Every unmanaged fee, each exactly once.
pub fn all_unmanaged_fees(portal: &dyn CommunityPass) -> Result<Vec<UnmanagedFee>, PortalError> {
    walk_pages(
        "unmanaged fee listing",
        |cursor| portal.unmanaged_fees_page(cursor),
        |fee| fee.vendor_fee_id.clone(),
    )
}

/// Every patron balance, each exactly once.
pub fn all_balances(portal: &dyn CommunityPass) -> Result<Vec<PatronBalance>, PortalError> {
    walk_pages(
        "balance listing",
        |cursor| portal.balances_page(cursor),
        |balance| balance.patron_id.clone(),
    )
}

/// The transactions read from the cursor: each record once, in sequence
/// order, and the cursor to store for the next read. Identical copies of
/// one vendor id are kept once; copies that differ are all kept (conflicting
/// copies: evidence for a person, never posted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnBatch {
    pub items: Vec<VendorTxn>,
    pub next_after: i64,
    /// Identical copies the server delivered again (duplicates and redeliveries).
    pub duplicates_dropped: u64,
    /// Copies of an id already read that differ from it (all kept in `items`).
    pub conflicting_copies: u64,
    /// Records that break the contract, each once.
    pub rejected: Vec<RejectedRecord>,
    /// Why reading stopped early: the server named a cursor it could not
    /// have meant (a jump past what it sent, or backwards). `next_after`
    /// is then the last position actually read, and the page that named
    /// it was not taken.
    pub cursor_refused: Option<String>,
}

impl TxnBatch {
    /// Nothing read yet, at `after`.
    pub fn empty(after: i64) -> TxnBatch {
        TxnBatch {
            items: Vec::new(),
            next_after: after,
            duplicates_dropped: 0,
            conflicting_copies: 0,
            rejected: Vec::new(),
            cursor_refused: None,
        }
    }

    /// Adds another read's records (of another scope) to this one; the
    /// caller sorts.
    pub fn merge(&mut self, other: TxnBatch) {
        let mut by_id: FxHashMap<VendorTxnId, Vec<usize>> = FxHashMap::default();
        for (i, txn) in self.items.iter().enumerate() {
            by_id.entry(txn.id.clone()).or_default().push(i);
        }
        for txn in other.items {
            let copies = by_id.entry(txn.id.clone()).or_default();
            if copies.iter().any(|i| self.items[*i].same_record(&txn)) {
                self.duplicates_dropped += 1;
                continue;
            }
            if !copies.is_empty() {
                self.conflicting_copies += 1;
            }
            copies.push(self.items.len());
            self.items.push(txn);
        }
        self.next_after = self.next_after.max(other.next_after);
        self.duplicates_dropped += other.duplicates_dropped;
        self.conflicting_copies += other.conflicting_copies;
        for record in other.rejected {
            if !self.rejected.contains(&record) {
                self.rejected.push(record);
            }
        }
        if self.cursor_refused.is_none() {
            self.cursor_refused = other.cursor_refused;
        }
    }
}

/// Reads every transaction after `after` exactly once, whatever the server
/// repeats or reorders: items at or before the cursor are redeliveries,
/// identical copies are duplicates, and the result is sorted by sequence.
/// A cursor the server could not have meant stops the read there (see
/// `TxnBatch::cursor_refused`); what was read before it is returned.
pub fn transactions_after(
    portal: &dyn CommunityPass,
    scope: TxnScope<'_>,
    after: i64,
) -> Result<TxnBatch, PortalError> {
    let mut collector = TxnCollector::new(after);
    for _ in 0..PAGES_MAX {
        let page = portal.transactions_page(scope, collector.next_after)?;
        let page_items = page.items.len() + page.rejected.len();
        check_bounds("transaction cursor", page_items, collector.items.len())?;
        if !collector.accept(page)? {
            return Ok(collector.finish());
        }
    }
    Err(PortalError::protocol(
        "transaction cursor",
        format!("more than PAGES_MAX = {PAGES_MAX} pages"),
    ))
}

/// The exactly-once bookkeeping of `transactions_after`.
struct TxnCollector {
    next_after: i64,
    items: Vec<VendorTxn>,
    /// Where each id's copies are in `items`.
    ids_seen: FxHashMap<VendorTxnId, Vec<usize>>,
    duplicates_dropped: u64,
    conflicting_copies: u64,
    rejected: Vec<RejectedRecord>,
    cursor_refused: Option<String>,
}

impl TxnCollector {
    fn new(after: i64) -> TxnCollector {
        TxnCollector {
            next_after: after,
            items: Vec::new(),
            ids_seen: FxHashMap::default(),
            duplicates_dropped: 0,
            conflicting_copies: 0,
            rejected: Vec::new(),
            cursor_refused: None,
        }
    }

    /// The furthest `next_after` a page could mean: the highest sequence it
    /// carries; for a page without items (or with records whose sequence
    /// could not be read), what was asked plus the largest page.
    fn cursor_bound(after: i64, page: &TxnPage) -> i64 {
        let highest = page.items.iter().map(|txn| txn.sequence).max();
        match highest {
            Some(highest) if page.rejected.is_empty() => highest.max(after),
            highest => highest
                .unwrap_or(after)
                .max(after)
                .saturating_add(i64::from(PAGE_SIZE_MAX)),
        }
    }

    /// Takes one page; returns whether another page should be read. A
    /// cursor beyond what the page could mean, or backwards, refuses the
    /// page: reading stops, and the cursor stays where it was.
    fn accept(&mut self, page: TxnPage) -> Result<bool, PortalError> {
        let after = self.next_after;
        let bound = TxnCollector::cursor_bound(after, &page);
        if page.next_after < after || page.next_after > bound {
            let direction = if page.next_after < after {
                "backwards".to_string()
            } else {
                format!("past the highest sequence the page could mean ({bound})")
            };
            let message = format!(
                "Community Pass named cursor {} after {after}, {direction}; the page was not taken and the cursor stays at {after} (re-read with get-payments --from-sequence once Community Pass is corrected)",
                page.next_after
            );
            tracing::warn!(%message, "transaction cursor refused");
            self.cursor_refused = Some(message);
            return Ok(false);
        }
        if page.has_more && page.next_after == after {
            return Err(PortalError::protocol(
                "transaction cursor",
                format!(
                    "cursor did not advance: asked after {after}, told {}",
                    page.next_after
                ),
            ));
        }
        for txn in &page.items {
            if txn.sequence > page.next_after {
                return Err(PortalError::protocol(
                    format!("transaction {}", txn.id),
                    format!(
                        "sequence {} is beyond the page cursor {}",
                        txn.sequence, page.next_after
                    ),
                ));
            }
        }
        for record in page.rejected {
            if !self.rejected.contains(&record) {
                self.rejected.push(record);
            }
        }
        for txn in page.items {
            if txn.sequence <= after {
                self.duplicates_dropped += 1; // a redelivery before the cursor
                continue;
            }
            let copies = self.ids_seen.entry(txn.id.clone()).or_default();
            if copies.iter().any(|i| self.items[*i].same_record(&txn)) {
                self.duplicates_dropped += 1;
                continue;
            }
            if !copies.is_empty() {
                self.conflicting_copies += 1;
            }
            copies.push(self.items.len());
            self.items.push(txn);
        }
        self.next_after = page.next_after;
        Ok(page.has_more)
    }

    fn finish(mut self) -> TxnBatch {
        self.items.sort_by_key(|txn| txn.sequence);
        TxnBatch {
            items: self.items,
            next_after: self.next_after,
            duplicates_dropped: self.duplicates_dropped,
            conflicting_copies: self.conflicting_copies,
            rejected: self.rejected,
            cursor_refused: self.cursor_refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FeeStatus, TxnKind};
    use chrono::NaiveDate;

    fn push(id: i64, cents: i64) -> FeePush {
        FeePush {
            genesis_fee_id: FeeId(id),
            student_id: StudentId(7),
            patron_id: "P7".into(),
            guardian_ids: vec![GuardianId(70)],
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

    #[test]
    fn digest_is_content_bound_and_key_names_the_intent() {
        let a = push_digest(&push(1, 1000));
        assert_eq!(a, push_digest(&push(1, 1000)));
        assert_ne!(a, push_digest(&push(1, 1001)));
        assert_ne!(a, push_digest(&push(2, 1000)));
        let mut moved = push(1, 1000);
        moved.description = "Bus pass (corrected)".into();
        assert_ne!(a, push_digest(&moved), "every field is in the digest");
        assert_eq!(a.len(), 64);
        let first = intent_key(FeeId(1), 1, &a);
        assert_eq!(first, format!("fee-1-1-{}", &a[..16]));
        assert_ne!(first, intent_key(FeeId(1), 3, &a), "same body, new intent");
    }

    #[test]
    fn a_server_that_ignores_the_page_limit_is_an_error_naming_the_bound() {
        let mut served = 0u32;
        let endless = walk_pages::<u32, u32, _, _>(
            "fee listing",
            |_| {
                served += 1;
                Ok(Page {
                    items: (0..60_000).collect(),
                    next_cursor: Some(format!("c{served}")),
                    rejected: vec![],
                })
            },
            |n| *n,
        );
        let error = endless.unwrap_err().to_string();
        assert!(error.contains("PAGE_ITEMS_MAX = 2000"), "{error}");
        assert_eq!(served, 1, "stopped at the first oversized page");
        assert!(check_bounds("x", 10, LISTING_RECORDS_MAX - 5)
            .unwrap_err()
            .to_string()
            .contains("LISTING_RECORDS_MAX"));
    }

    #[test]
    fn walk_pages_dedupes_and_stops_on_repeated_cursor() {
        let pages = [
            Page {
                items: vec![1, 2],
                next_cursor: Some("a".to_string()),
                rejected: vec![],
            },
            Page {
                items: vec![2, 3],
                next_cursor: None,
                rejected: vec![],
            },
        ];
        let mut index = 0;
        let all = walk_pages(
            "numbers",
            |_| {
                index += 1;
                Ok(pages[index - 1].clone())
            },
            |n| *n,
        )
        .unwrap();
        assert_eq!(all, vec![1, 2, 3]);

        let looping = walk_pages::<i32, i32, _, _>(
            "numbers",
            |_| {
                Ok(Page {
                    items: vec![],
                    next_cursor: Some("same".to_string()),
                    rejected: vec![],
                })
            },
            |n| *n,
        );
        assert!(matches!(looping, Err(PortalError::Protocol { .. })));
    }

    fn txn(sequence: i64) -> VendorTxn {
        VendorTxn {
            id: VendorTxnId(format!("T{sequence}")),
            sequence,
            genesis_fee_id: Some(FeeId(1)),
            vendor_fee_id: "CPF1".into(),
            student_id: Some(StudentId(7)),
            kind: TxnKind::Payment,
            amount: Money::from_cents(100),
            method: "card".into(),
            occurred_at: NaiveDate::from_ymd_opt(2024, 9, 2)
                .unwrap()
                .and_hms_opt(9, 0, 0)
                .unwrap(),
            reverses: None,
        }
    }

    #[test]
    fn collector_drops_redeliveries_and_sorts() {
        let mut collector = TxnCollector::new(2);
        let more = collector
            .accept(TxnPage {
                items: vec![txn(4), txn(2), txn(3), txn(4)],
                next_after: 4,
                has_more: true,
                rejected: vec![],
            })
            .unwrap();
        assert!(more);
        let more = collector
            .accept(TxnPage {
                items: vec![txn(5), txn(3)],
                next_after: 5,
                has_more: false,
                rejected: vec![],
            })
            .unwrap();
        assert!(!more);
        let batch = collector.finish();
        let sequences: Vec<i64> = batch.items.iter().map(|t| t.sequence).collect();
        assert_eq!(sequences, vec![3, 4, 5]);
        assert_eq!(batch.duplicates_dropped, 3);
        assert_eq!(batch.next_after, 5);
    }

    #[test]
    fn collector_keeps_conflicting_copies_and_drops_identical_ones() {
        let mut collector = TxnCollector::new(0);
        let mut other = txn(2);
        other.id = VendorTxnId("T1".into());
        other.amount = Money::from_cents(325);
        let mut same = txn(1);
        same.sequence = 3; // an identical redelivery at another position
        collector
            .accept(TxnPage {
                items: vec![txn(1), other.clone(), same],
                next_after: 3,
                has_more: false,
                rejected: vec![],
            })
            .unwrap();
        let batch = collector.finish();
        assert_eq!(batch.items, vec![txn(1), other]);
        assert_eq!(batch.conflicting_copies, 1);
        assert_eq!(batch.duplicates_dropped, 1);
    }

    #[test]
    fn merging_batches_keeps_differing_copies_once_each() {
        let mut all = TxnBatch::empty(0);
        let mut first = TxnBatch::empty(0);
        first.items = vec![txn(1), txn(2)];
        first.next_after = 2;
        let mut second = TxnBatch::empty(0);
        let mut other = txn(2);
        other.amount = Money::from_cents(999);
        second.items = vec![txn(2), other.clone(), txn(3)];
        second.next_after = 3;
        all.merge(first);
        all.merge(second);
        assert_eq!(all.items, vec![txn(1), txn(2), other, txn(3)]);
        assert_eq!((all.duplicates_dropped, all.conflicting_copies), (1, 1));
        assert_eq!(all.next_after, 3);
    }

    #[test]
    fn collector_refuses_a_cursor_jump_and_keeps_what_was_read() {
        let mut collector = TxnCollector::new(0);
        assert!(collector
            .accept(TxnPage {
                items: vec![txn(1), txn(2)],
                next_after: 2,
                has_more: true,
                rejected: vec![],
            })
            .unwrap());
        let more = collector
            .accept(TxnPage {
                items: vec![txn(3)],
                next_after: i64::MAX,
                has_more: false,
                rejected: vec![],
            })
            .unwrap();
        assert!(!more);
        let batch = collector.finish();
        assert_eq!(
            batch.next_after, 2,
            "the cursor stays at the last good page"
        );
        assert_eq!(batch.items.len(), 2, "the refused page is not taken");
        assert!(batch
            .cursor_refused
            .unwrap()
            .contains("9223372036854775807"));
        // An empty last page may move at most one page past what was asked.
        let mut collector = TxnCollector::new(5);
        collector
            .accept(TxnPage {
                items: vec![],
                next_after: 5 + i64::from(PAGE_SIZE_MAX) + 1,
                has_more: false,
                rejected: vec![],
            })
            .unwrap();
        assert!(collector.finish().cursor_refused.is_some());
        let mut collector = TxnCollector::new(5);
        collector
            .accept(TxnPage {
                items: vec![],
                next_after: 4,
                has_more: false,
                rejected: vec![],
            })
            .unwrap();
        let backwards = collector.finish();
        assert!(backwards.cursor_refused.unwrap().contains("backwards"));
        assert_eq!(backwards.next_after, 5);
    }

    #[test]
    fn collector_rejects_a_stuck_or_lying_cursor() {
        let mut collector = TxnCollector::new(3);
        let stuck = collector.accept(TxnPage {
            items: vec![],
            next_after: 3,
            has_more: true,
            rejected: vec![],
        });
        assert!(matches!(stuck, Err(PortalError::Protocol { .. })));
        let mut collector = TxnCollector::new(0);
        let beyond = collector.accept(TxnPage {
            items: vec![txn(9)],
            next_after: 5,
            has_more: false,
            rejected: vec![],
        });
        assert!(matches!(beyond, Err(PortalError::Protocol { .. })));
    }
}
