//! The simulator's HTTP layer (hyper 1 on tokio): routes the vendor API of
//! `api/community-pass.openapi.yaml` and the admin surface under `/_sim`,
//! applies the fault plan to vendor requests, and runs each handler on the
//! blocking pool so the async workers only move bytes. State changes happen
//! under one mutex per concern, taken in the order districts, then faults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chrono::NaiveDateTime;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::faults::{FaultInjector, FaultPlan, Refusal};
use super::generate::generate;
use super::model::{
    ActionBatch, ActionResults, ErrorBody, FaultConfig, GenerateSpec, NewDistrict, RotatedKey,
};
use super::state::{
    ApiError, District, DistrictSnapshot, FeeQuery, IdempotentReply, Scope, ID_MAX,
};
use crate::domain::{FeeId, FeePush, GuardianId, PatronBalance, StudentId, VendorFee, VendorTxn};
use crate::portal::{
    canonical_body, hex, ConnectionCheck, FEE_IDS_PER_REQUEST_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX,
};
use crate::secret::Secret;

/// The largest request body of the vendor API.
const VENDOR_BODY_BYTES_MAX: usize = 64 * 1024;
/// The most fees one `POST /v1/fee-upserts` may carry.
pub const FEE_UPSERTS_ITEMS_MAX: usize = 500;
/// The largest body of a `POST /v1/fee-upserts` (500 fees of 1 KiB each,
/// and room to spare).
const FEE_UPSERTS_BODY_BYTES_MAX: usize = 1024 * 1024;
/// The largest admin request body (bulk loads).
const ADMIN_BODY_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Bounds of an idempotency key and of a test-push nonce.
const IDEMPOTENCY_KEY_CHARS_MIN: usize = 8;
const IDEMPOTENCY_KEY_CHARS_MAX: usize = 128;
const NONCE_CHARS_MAX: usize = 64;
const DISTRICT_CHARS_MAX: usize = 64;

pub type Reply = Response<Full<Bytes>>;

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug)]
pub struct DroppedConnection;

impl std::fmt::Display for DroppedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DroppedConnection {}

/// What all connections share.
pub struct Shared {
    pub seed: u64,
    pub initial_faults: FaultConfig,
    pub districts: Mutex<BTreeMap<String, District>>,
    pub keys: Mutex<Vec<(String, Secret)>>,
    pub faults: Mutex<FaultInjector>,
    pub state_file: Option<PathBuf>,
    /// Seconds the server's clock is ahead of the wall clock: moved only
    /// forward, by `POST /_sim/clock`, so tests cross a second without
    /// sleeping.
    pub clock_offset_secs: std::sync::atomic::AtomicI64,
}

/// The persisted form of the simulator (keys are never written).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SimSnapshot {
    pub districts: BTreeMap<String, DistrictSnapshot>,
}

/// Locks a mutex, recovering the data if a handler panicked while holding it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Longest single move of the server's clock, a year.
const CLOCK_ADVANCE_SECS_MAX: i64 = 366 * 24 * 3600;

impl Shared {
    /// The server's clock: UTC, whole seconds, plus the offset tests set.
    pub fn now(&self) -> NaiveDateTime {
        use chrono::SubsecRound;
        let offset = self
            .clock_offset_secs
            .load(std::sync::atomic::Ordering::SeqCst);
        chrono::Utc::now().naive_utc().trunc_subsecs(0) + chrono::Duration::seconds(offset)
    }

    /// Writes the state file atomically (temporary name, then rename) with
    /// owner-only permissions.
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.state_file else {
            anyhow::bail!("no state file configured");
        };
        let snapshot = SimSnapshot {
            districts: lock(&self.districts)
                .iter()
                .map(|(name, district)| (name.clone(), district.snapshot()))
                .collect(),
        };
        let bytes = serde_json::to_vec(&snapshot)?;
        crate::files::write_private(path, &bytes)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    fn reset(&self) {
        let mut districts = lock(&self.districts);
        for district in districts.values_mut() {
            *district = District::default();
        }
        *lock(&self.faults) = FaultInjector::new(self.initial_faults.clone(), self.seed);
    }

    /// The district whose API key the request carries.
    fn authenticate(&self, header: Option<&HeaderValue>) -> Option<String> {
        let token = header?.to_str().ok()?.strip_prefix("Bearer ")?;
        lock(&self.keys)
            .iter()
            .find(|(_, key)| key.ct_eq(token))
            .map(|(district, _)| district.clone())
    }
}

/// Reads a saved simulator state.
pub fn load_snapshot(path: &std::path::Path) -> anyhow::Result<SimSnapshot> {
    let bytes = std::fs::read(path)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn json_reply<T: Serialize>(status: u16, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => bytes_reply(status, body),
        Err(e) => error_reply(&ApiError::new(500, "internal", e.to_string())),
    }
}

fn bytes_reply(status: u16, body: Vec<u8>) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn error_reply(error: &ApiError) -> Reply {
    let body = ErrorBody {
        code: error.code.to_string(),
        message: error.message.clone(),
    };
    let mut reply = json_reply(error.status, &body);
    if error.status == 401 {
        reply
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    reply
}

fn refusal_reply(refusal: Refusal) -> Reply {
    match refusal {
        Refusal::RateLimited { retry_after_secs } => {
            let error = ApiError::new(429, "rate_limited", "too many requests; retry later");
            let mut reply = error_reply(&error);
            reply
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            reply
        }
        Refusal::ServerError { status } => error_reply(&ApiError::new(
            status,
            "unavailable",
            "the service is temporarily unavailable",
        )),
    }
}

/// The request as the blocking handlers see it.
struct Call {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    headers: hyper::HeaderMap,
    body: Bytes,
}

async fn read_call(request: Request<Incoming>, limit: usize) -> Result<Call, ApiError> {
    let (parts, body) = request.into_parts();
    let collected = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|_| ApiError::new(413, "body_too_large", format!("body over {limit} bytes")))?;
    let query = parts
        .uri
        .query()
        .map(|text| {
            form_urlencoded::parse(text.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    Ok(Call {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers,
        body: collected.to_bytes(),
    })
}

/// Runs a blocking handler on tokio's blocking pool.
async fn blocking(work: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| error_reply(&ApiError::new(500, "internal", "handler failed")))
}

/// The service: `/_sim/...` is the admin surface, everything else the vendor API.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Reply, DroppedConnection> {
    let path = request.uri().path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        return Ok(admin(shared, request).await);
    }
    vendor(shared, request).await
}

// ---------------------------------------------------------------- vendor API

/// The vendor API's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    TestPull,
    TestPush,
    Fees,
    Fee(FeeId),
    UpsertFee(FeeId),
    UpsertFees,
    UnmanagedFees,
    Transactions,
    Balances,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::TestPull => "GET /v1/connection/test-pull",
            Route::TestPush => "POST /v1/connection/test-push",
            Route::Fees => "GET /v1/fees",
            Route::Fee(_) => "GET /v1/fees/{id}",
            Route::UpsertFee(_) => "PUT /v1/fees/{id}",
            Route::UpsertFees => "POST /v1/fee-upserts",
            Route::UnmanagedFees => "GET /v1/unmanaged-fees",
            Route::Transactions => "GET /v1/transactions",
            Route::Balances => "GET /v1/balances",
        }
    }
}

/// Why a request matched no route.
enum NoRoute {
    NotFound,
    MethodNotAllowed(&'static str),
    BadId,
}

fn route(method: &Method, path: &str) -> Result<Route, NoRoute> {
    let only = |allowed: &'static str, wanted: Method, route: Route| {
        if *method == wanted {
            Ok(route)
        } else {
            Err(NoRoute::MethodNotAllowed(allowed))
        }
    };
    match path {
        "/v1/connection/test-pull" => only("GET", Method::GET, Route::TestPull),
        "/v1/connection/test-push" => only("POST", Method::POST, Route::TestPush),
        "/v1/fees" => only("GET", Method::GET, Route::Fees),
        "/v1/fee-upserts" => only("POST", Method::POST, Route::UpsertFees),
        "/v1/unmanaged-fees" => only("GET", Method::GET, Route::UnmanagedFees),
        "/v1/transactions" => only("GET", Method::GET, Route::Transactions),
        "/v1/balances" => only("GET", Method::GET, Route::Balances),
        _ => fee_route(method, path),
    }
}

fn fee_route(method: &Method, path: &str) -> Result<Route, NoRoute> {
    let text = path.strip_prefix("/v1/fees/").ok_or(NoRoute::NotFound)?;
    if text.is_empty() || text.contains('/') {
        return Err(NoRoute::NotFound);
    }
    let id = text
        .parse::<i64>()
        .ok()
        .filter(|id| (1..=ID_MAX).contains(id))
        .map(FeeId);
    match (method, id) {
        (_, None) => Err(NoRoute::BadId),
        (&Method::GET, Some(id)) => Ok(Route::Fee(id)),
        (&Method::PUT, Some(id)) => Ok(Route::UpsertFee(id)),
        _ => Err(NoRoute::MethodNotAllowed("GET, PUT")),
    }
}

fn no_route_reply(reason: NoRoute) -> Reply {
    match reason {
        NoRoute::NotFound => error_reply(&ApiError::not_found("not_found", "no such resource")),
        NoRoute::BadId => error_reply(&ApiError::unprocessable(
            "invalid_path",
            format!("genesisFeeId must be an integer from 1 to {ID_MAX}"),
        )),
        NoRoute::MethodNotAllowed(allowed) => {
            let mut reply = error_reply(&ApiError::new(
                405,
                "method_not_allowed",
                "method not allowed",
            ));
            reply
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            reply
        }
    }
}

async fn vendor(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Reply, DroppedConnection> {
    let routed = route(request.method(), request.uri().path());
    let (label, transaction_page, fee_write) = match &routed {
        Ok(route) => (
            route.label(),
            *route == Route::Transactions,
            matches!(route, Route::UpsertFee(_) | Route::UpsertFees),
        ),
        Err(_) => ("unrouted", false, false),
    };
    let mut identity = super::faults::request_identity(
        request.method().as_str(),
        request.uri().path(),
        request.uri().query(),
    );
    // A batch of fee upserts is told apart by the fees it carries (every
    // batch has the same path), so its faults do not depend on which of
    // several batches in flight arrived first.
    let incoming = if matches!(routed, Ok(Route::UpsertFees)) {
        let call = read_call(request, FEE_UPSERTS_BODY_BYTES_MAX).await;
        if let Ok(call) = &call {
            identity.push_str(&batch_identity(&call.body));
        }
        VendorRequest::Read(call)
    } else {
        VendorRequest::Unread(request)
    };
    let batch = matches!(routed, Ok(Route::UpsertFees));
    let plan = lock(&shared.faults).plan(label, &identity, transaction_page, fee_write, batch);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let reply = match plan.refusal {
        Some(refusal) => refusal_reply(refusal),
        None => answer(&shared, incoming, routed, plan).await,
    };
    lock(&shared.faults).record_status(reply.status().as_u16());
    if plan.drop_answer {
        return Err(DroppedConnection);
    }
    Ok(reply)
}

/// A request whose body is still to be read, or was read already (a batch
/// of fee upserts, read to tell it apart for its faults).
enum VendorRequest {
    Unread(Request<Incoming>),
    Read(Result<Call, ApiError>),
}

/// The genesis fee ids a batch body names, for its fault identity (empty
/// when the body is not a batch).
fn batch_identity(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Item {
        fee: ItemFee,
    }
    #[derive(Deserialize)]
    struct ItemFee {
        genesis_fee_id: i64,
    }
    #[derive(Deserialize)]
    struct Batch {
        items: Vec<Item>,
    }
    match serde_json::from_slice::<Batch>(body) {
        Ok(batch) => {
            let ids: Vec<String> = batch
                .items
                .iter()
                .map(|item| item.fee.genesis_fee_id.to_string())
                .collect();
            format!("#{}", ids.join(","))
        }
        Err(_) => String::new(),
    }
}

async fn answer(
    shared: &Arc<Shared>,
    incoming: VendorRequest,
    routed: Result<Route, NoRoute>,
    plan: FaultPlan,
) -> Reply {
    let headers = match &incoming {
        VendorRequest::Unread(request) => request.headers().get(AUTHORIZATION),
        VendorRequest::Read(Ok(call)) => call.headers.get(AUTHORIZATION),
        VendorRequest::Read(Err(_)) => None,
    };
    let district = shared.authenticate(headers);
    if let (None, VendorRequest::Read(Err(error))) = (&district, &incoming) {
        if error.status == 413 {
            // The body was read first; an unauthenticated one is still 401.
            return error_reply(&ApiError::new(
                401,
                "unauthorized",
                "missing or unknown API key",
            ));
        }
    }
    let Some(district) = district else {
        return error_reply(&ApiError::new(
            401,
            "unauthorized",
            "missing or unknown API key",
        ));
    };
    let route = match routed {
        Ok(route) => route,
        Err(reason) => return no_route_reply(reason),
    };
    let call = match incoming {
        VendorRequest::Unread(request) => read_call(request, VENDOR_BODY_BYTES_MAX).await,
        VendorRequest::Read(call) => call,
    };
    let call = match call {
        Ok(call) => call,
        Err(error) => return error_reply(&error),
    };
    let shared = Arc::clone(shared);
    blocking(
        move || match serve_vendor(&shared, &district, route, &call, plan) {
            Ok(reply) => reply,
            Err(error) => error_reply(&error),
        },
    )
    .await
}

fn serve_vendor(
    shared: &Shared,
    district: &str,
    route: Route,
    call: &Call,
    plan: FaultPlan,
) -> Result<Reply, ApiError> {
    let now = shared.now();
    let mut districts = lock(&shared.districts);
    let state = districts.entry(district.to_string()).or_default();
    match route {
        Route::TestPull => Ok(json_reply(200, &connection_check(district, None, now))),
        Route::TestPush => test_push(district, &call.body, now),
        Route::Fees => fees(state, &call.query),
        Route::Fee(id) => match state.fee(id) {
            Some(fee) => Ok(json_reply(200, &served_fee(state, fee))),
            None => Err(ApiError::not_found("fee_not_found", format!("no fee {id}"))),
        },
        Route::UpsertFee(id) => upsert(state, id, call, plan.lose_write, now),
        Route::UpsertFees => {
            let mut faults = lock(&shared.faults);
            upsert_batch(state, call, plan, &mut faults, now)
        }
        Route::UnmanagedFees => unmanaged_fees(state, &call.query),
        Route::Transactions => {
            let mut faults = lock(&shared.faults);
            transactions(state, &call.query, plan, &mut faults)
        }
        Route::Balances => balances(state, &call.query, now),
    }
}

fn connection_check(district: &str, echo: Option<String>, now: NaiveDateTime) -> ConnectionCheck {
    ConnectionCheck {
        district: district.to_string(),
        server_time: now,
        echo,
    }
}

#[derive(Deserialize)]
struct TestPush {
    nonce: String,
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::unprocessable("invalid_body", format!("invalid JSON body: {e}")))
}

fn test_push(district: &str, body: &[u8], now: NaiveDateTime) -> Result<Reply, ApiError> {
    let push: TestPush = parse_json(body)?;
    let chars = push.nonce.chars().count();
    if chars == 0 || chars > NONCE_CHARS_MAX {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("nonce must be 1 to {NONCE_CHARS_MAX} characters"),
        ));
    }
    Ok(json_reply(
        200,
        &connection_check(district, Some(push.nonce), now),
    ))
}

fn query_number(
    query: &BTreeMap<String, String>,
    name: &str,
    low: i64,
    high: i64,
) -> Result<Option<i64>, ApiError> {
    let Some(text) = query.get(name) else {
        return Ok(None);
    };
    text.parse::<i64>()
        .ok()
        .filter(|n| (low..=high).contains(n))
        .map(Some)
        .ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_query",
                format!("{name} must be an integer from {low} to {high}"),
            )
        })
}

fn limit(query: &BTreeMap<String, String>) -> Result<usize, ApiError> {
    let limit = query_number(query, "limit", 1, i64::from(PAGE_SIZE_MAX))?;
    Ok(limit.unwrap_or(i64::from(PAGE_SIZE_DEFAULT)) as usize)
}

fn invalid_cursor() -> ApiError {
    ApiError::unprocessable("invalid_cursor", "cursor is not one this server issued")
}

/// Integer cursors (fees, unmanaged fees) are the last key: 1 to 18 digits.
fn integer_cursor(query: &BTreeMap<String, String>) -> Result<Option<i64>, ApiError> {
    let Some(text) = query.get("cursor") else {
        return Ok(None);
    };
    let digits = (1..=18).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return Err(invalid_cursor());
    }
    text.parse::<i64>().map(Some).map_err(|_| invalid_cursor())
}

#[derive(Serialize)]
struct PageBody<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// `genesis_fee_ids`: 1 to `FEE_IDS_PER_REQUEST_MAX` comma-separated ids,
/// returned sorted and without repeats.
fn fee_ids(query: &BTreeMap<String, String>) -> Result<Option<Vec<FeeId>>, ApiError> {
    let Some(text) = query.get("genesis_fee_ids") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::unprocessable(
            "invalid_query",
            format!(
                "genesis_fee_ids must be 1 to {FEE_IDS_PER_REQUEST_MAX} comma-separated integers from 1 to {ID_MAX}"
            ),
        )
    };
    let mut ids = Vec::new();
    for part in text.split(',') {
        let digits =
            !part.is_empty() && part.len() <= 12 && part.bytes().all(|b| b.is_ascii_digit());
        let id = digits
            .then(|| part.parse::<i64>().ok())
            .flatten()
            .filter(|id| (1..=ID_MAX).contains(id))
            .ok_or_else(invalid)?;
        ids.push(FeeId(id));
    }
    if ids.len() > FEE_IDS_PER_REQUEST_MAX {
        return Err(invalid());
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Some(ids))
}

/// `updated_since`: an RFC 3339 time with an offset, compared in UTC.
fn updated_since(query: &BTreeMap<String, String>) -> Result<Option<NaiveDateTime>, ApiError> {
    let Some(text) = query.get("updated_since") else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| Some(time.naive_utc()))
        .map_err(|_| {
            ApiError::unprocessable(
                "invalid_query",
                "updated_since must be an RFC 3339 time such as 2024-09-01T08:00:00Z",
            )
        })
}

fn fees(state: &District, query: &BTreeMap<String, String>) -> Result<Reply, ApiError> {
    let limit = limit(query)?;
    let selection = FeeQuery {
        student: query_number(query, "student_id", 1, ID_MAX)?.map(StudentId),
        ids: fee_ids(query)?,
        updated_since: updated_since(query)?,
    };
    let after = integer_cursor(query)?.map(FeeId);
    let (items, next) = state.fees_page(&selection, after, limit);
    let items: Vec<serde_json::Value> = items.iter().map(|f| served_fee(state, f)).collect();
    let body = PageBody {
        items,
        next_cursor: next.map(|id| id.to_string()),
    };
    Ok(json_reply(200, &body))
}

/// A fee as served: with an injected corrupt field (`CorruptFee`), its raw
/// text in place of the field's value.
fn served_fee(state: &District, fee: &VendorFee) -> serde_json::Value {
    let mut value = serde_json::to_value(fee).unwrap_or(serde_json::Value::Null);
    if let (Some((field, raw)), Some(object)) = (
        state.corrupt_field(fee.genesis_fee_id),
        value.as_object_mut(),
    ) {
        object.insert(field.clone(), serde_json::Value::String(raw.clone()));
    }
    value
}

/// A patron balance as served: with an injected corrupt field
/// (`CorruptBalance`), its raw text in place of the field's value.
fn served_balance(state: &District, balance: &PatronBalance) -> serde_json::Value {
    let mut value = serde_json::to_value(balance).unwrap_or(serde_json::Value::Null);
    if let (Some((field, raw)), Some(object)) = (
        state.corrupt_balance_field(&balance.patron_id),
        value.as_object_mut(),
    ) {
        object.insert(field.clone(), serde_json::Value::String(raw.clone()));
    }
    value
}

fn unmanaged_fees(state: &District, query: &BTreeMap<String, String>) -> Result<Reply, ApiError> {
    let limit = limit(query)?;
    let after = integer_cursor(query)?.map(|n| n as u64);
    let (items, next) = state.unmanaged_page(after, limit);
    let body = PageBody {
        items,
        next_cursor: next.map(|n| n.to_string()),
    };
    Ok(json_reply(200, &body))
}

/// Balance cursors are the last patron id, hex-encoded.
fn decode_hex_cursor(text: &str) -> Result<String, ApiError> {
    if text.is_empty() || text.len() % 2 != 0 || text.len() > 512 {
        return Err(invalid_cursor());
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect();
    bytes
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .ok_or_else(invalid_cursor)
}

fn balances(
    state: &District,
    query: &BTreeMap<String, String>,
    now: NaiveDateTime,
) -> Result<Reply, ApiError> {
    let limit = limit(query)?;
    let after = query
        .get("cursor")
        .map(|c| decode_hex_cursor(c))
        .transpose()?;
    let (items, next) = state.balances_page(after.as_deref(), limit, now);
    let items: Vec<serde_json::Value> = items.iter().map(|b| served_balance(state, b)).collect();
    let body = PageBody {
        items,
        next_cursor: next.map(|patron| hex(patron.as_bytes())),
    };
    Ok(json_reply(200, &body))
}

#[derive(Serialize)]
struct TxnPageBody<'a> {
    items: Vec<&'a VendorTxn>,
    next_after: i64,
    has_more: bool,
}

fn transactions(
    state: &District,
    query: &BTreeMap<String, String>,
    plan: FaultPlan,
    faults: &mut FaultInjector,
) -> Result<Reply, ApiError> {
    let limit = limit(query)?;
    let after = query_number(query, "after", 0, i64::MAX)?.unwrap_or(0);
    let student = query_number(query, "student_id", 1, ID_MAX)?;
    let guardian = query_number(query, "guardian_id", 1, ID_MAX)?;
    let scope = match (student, guardian) {
        (None, None) => Scope::All,
        (Some(id), None) => Scope::Student(StudentId(id)),
        (None, Some(id)) => Scope::Guardian(GuardianId(id)),
        (Some(student), Some(guardian)) => {
            Scope::StudentOfGuardian(StudentId(student), GuardianId(guardian))
        }
    };
    let fees = fee_ids(query)?;
    let selection = state.transactions_page(scope, fees.as_deref(), after, limit)?;
    let mut items = selection.items;
    if plan.duplicate {
        let whole_log = scope == Scope::All && fees.is_none();
        add_duplicates(state, whole_log, after, &mut items, faults, &plan);
    }
    if plan.reorder {
        faults.reorder(&mut items, &plan);
    }
    let next_after = match state.cursor_jump() {
        Some(jump) if !selection.has_more => jump, // an injected fault
        _ => selection.next_after,
    };
    let body = TxnPageBody {
        items,
        next_after,
        has_more: selection.has_more,
    };
    Ok(json_reply(200, &body))
}

/// Adds copies of some of the page's records and, on the full log, a
/// redelivery of the records just before the cursor.
fn add_duplicates<'a>(
    state: &'a District,
    whole_log: bool,
    after: i64,
    items: &mut Vec<&'a VendorTxn>,
    faults: &mut FaultInjector,
    plan: &FaultPlan,
) {
    let copies: Vec<&VendorTxn> = faults
        .duplicates(items.len(), plan)
        .into_iter()
        .map(|index| items[index])
        .collect();
    items.extend(copies);
    if whole_log {
        let earlier = (after - 2).max(1)..=after;
        items.extend(earlier.filter_map(|sequence| state.transaction(sequence)));
    }
}

fn header_text<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn check_idempotency_key(key: Option<&str>) -> Result<&str, ApiError> {
    let key = key.ok_or_else(|| {
        ApiError::new(
            400,
            "missing_idempotency_key",
            "the Idempotency-Key header is required",
        )
    })?;
    let well_formed = (IDEMPOTENCY_KEY_CHARS_MIN..=IDEMPOTENCY_KEY_CHARS_MAX).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !well_formed {
        return Err(ApiError::new(
            400,
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be {IDEMPOTENCY_KEY_CHARS_MIN} to {IDEMPOTENCY_KEY_CHARS_MAX} of A-Z a-z 0-9 - _ . :"
            ),
        ));
    }
    Ok(key)
}

/// A fee amount on the wire, exactly as the document's pattern: 1 to 8
/// digits, optionally a point and 1 or 2 digits; no spaces, and a leading
/// minus sign only where `signed` (a Genesis credit after an office refund).
fn is_amount_text(text: &str, signed: bool) -> bool {
    let text = match text.strip_prefix('-') {
        Some(rest) if signed => rest,
        _ => text,
    };
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits = |part: &str, max: usize| {
        (1..=max).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
    };
    digits(whole, 8) && fraction.is_none_or(|f| digits(f, 2))
}

/// Checks an amount's text and says exactly what is wrong with it.
fn check_amount_text(
    field: &str,
    value: Option<&serde_json::Value>,
    signed: bool,
) -> Result<(), ApiError> {
    let Some(serde_json::Value::String(text)) = value else {
        return Ok(()); // a missing or non-string value fails decoding, with its own message
    };
    if is_amount_text(text, signed) {
        return Ok(());
    }
    let shown: String = text.chars().take(32).collect();
    let expected = if signed {
        "an optional minus sign, 1 to 8 digits, and at most two decimal places"
    } else {
        "1 to 8 digits and at most two decimal places, with no sign"
    };
    Err(ApiError::unprocessable(
        "invalid_amount",
        format!("{field} {shown:?} is not an amount: expected {expected}"),
    ))
}

fn with_replay_marker(mut reply: Reply, replayed: bool) -> Reply {
    let value = if replayed { "true" } else { "false" };
    reply
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static(value));
    reply
}

/// `PUT /v1/fees/{id}`: same key and same body → the stored answer, marked
/// as a replay; same key and another body → 409; otherwise upsert and store.
/// With `lose_write` (a fault) the answer says applied but nothing changes.
fn upsert(
    state: &mut District,
    id: FeeId,
    call: &Call,
    lose_write: bool,
    now: NaiveDateTime,
) -> Result<Reply, ApiError> {
    let key = check_idempotency_key(header_text(&call.headers, "idempotency-key"))?;
    let value: serde_json::Value = parse_json(&call.body)?;
    check_amount_text("amount", value.get("amount"), false)?;
    check_amount_text("genesis_credit", value.get("genesis_credit"), true)?;
    let push: FeePush = serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable("invalid_body", format!("invalid fee: {e}")))?;
    let applied = upsert_one(state, Some(id), key, push, lose_write, now)?;
    Ok(with_replay_marker(
        bytes_reply(applied.status, applied.body.into_bytes()),
        applied.replayed,
    ))
}

/// One fee upsert as answered: the status (200 updated, 201 created), the
/// body, and whether it was answered from the idempotency store.
struct Applied {
    status: u16,
    body: String,
    replayed: bool,
}

/// The upsert of one fee under one idempotency key, shared by `PUT
/// /v1/fees/{id}` (`path_id` is the path's) and each item of `POST
/// /v1/fee-upserts`.
fn upsert_one(
    state: &mut District,
    path_id: Option<FeeId>,
    key: &str,
    push: FeePush,
    lose_write: bool,
    now: NaiveDateTime,
) -> Result<Applied, ApiError> {
    if path_id.is_some_and(|id| push.genesis_fee_id != id) {
        return Err(ApiError::unprocessable(
            "id_mismatch",
            "genesis_fee_id in the body differs from the path",
        ));
    }
    if !(1..=ID_MAX).contains(&push.genesis_fee_id.0) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("genesis_fee_id must be an integer from 1 to {ID_MAX}"),
        ));
    }
    let digest = hex(&Sha256::digest(canonical_body(&push)));
    if let Some(stored) = state.idempotent_reply(key) {
        if stored.request_digest != digest {
            return Err(ApiError::new(
                409,
                "idempotency_conflict",
                "this Idempotency-Key was used with a different request",
            ));
        }
        return Ok(Applied {
            status: stored.status,
            body: stored.body.clone(),
            replayed: true,
        });
    }
    let outcome = if lose_write {
        state.upsert_lost(&push)?
    } else {
        state.upsert(push, now)?
    };
    let status = if outcome.created { 201 } else { 200 };
    let body = serde_json::to_string(&outcome)
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let stored = IdempotentReply {
        request_digest: digest,
        status,
        body: body.clone(),
    };
    state.remember_reply(key.to_string(), stored);
    Ok(Applied {
        status,
        body,
        replayed: false,
    })
}

/// `POST /v1/fee-upserts`: each item is the upsert `PUT /v1/fees/{id}`
/// would make, with its own idempotency key, answered in order in one
/// `200` (an item refused — a reused key, a locked amount, a refund larger
/// than the fee — carries its own status and error). An item that breaks
/// the schema (its key or fee malformed or out of bounds) refuses the whole
/// request (422 naming it) with nothing applied. A lost write (a fault) is
/// drawn item by item.
fn upsert_batch(
    state: &mut District,
    call: &Call,
    plan: FaultPlan,
    faults: &mut super::faults::FaultInjector,
    now: NaiveDateTime,
) -> Result<Reply, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BatchItem<'a> {
        #[serde(borrow)]
        idempotency_key: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        fee: &'a serde_json::value::RawValue,
    }
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        items: Vec<BatchItem<'a>>,
    }
    let batch: Batch = parse_json(&call.body)?;
    if batch.items.is_empty() || batch.items.len() > FEE_UPSERTS_ITEMS_MAX {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("items must hold 1 to {FEE_UPSERTS_ITEMS_MAX} fees"),
        ));
    }
    // A request that breaks the schema is refused whole (422 naming the
    // item), nothing applied; a rule the schema cannot state (a refund
    // larger than the fee) refuses its item only, as a single PUT would.
    let mut checked = Vec::with_capacity(batch.items.len());
    for (index, item) in batch.items.iter().enumerate() {
        let valid = check_idempotency_key(Some(&item.idempotency_key))
            .and_then(|key| Ok((key, batch_fee(item.fee)?)))
            .and_then(|(key, push)| {
                crate::sim::state::validate_push_fields(&push)?;
                Ok((key, push))
            });
        match valid {
            Ok(item) => checked.push(item),
            Err(error) => {
                return Err(ApiError::unprocessable(
                    error.code,
                    format!("items[{index}]: {}", error.message),
                ))
            }
        }
    }
    let lost = faults.lost_writes(plan.write_seed, checked.len());
    let mut body = Vec::with_capacity(checked.len() * 256);
    body.extend_from_slice(b"{\"results\":[");
    for (index, ((key, push), lose_write)) in checked.into_iter().zip(lost).enumerate() {
        if index > 0 {
            body.push(b',');
        }
        let applied = upsert_one(state, None, key, push, lose_write, now);
        match applied {
            Ok(applied) => {
                // The stored answer is JSON already: it goes in as it is.
                body.extend_from_slice(
                    format!(
                        "{{\"status\":{},\"replayed\":{},\"result\":",
                        applied.status, applied.replayed
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(applied.body.as_bytes());
                body.push(b'}');
            }
            Err(error) => {
                let item = serde_json::json!({
                    "status": error.status,
                    "error": {"code": error.code, "message": error.message},
                });
                serde_json::to_writer(&mut body, &item)
                    .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
            }
        }
    }
    body.extend_from_slice(b"]}");
    Ok(bytes_reply(200, body))
}

/// One batch item's fee, checked as `PUT /v1/fees/{id}` checks its body.
fn batch_fee(raw: &serde_json::value::RawValue) -> Result<FeePush, ApiError> {
    #[derive(Deserialize)]
    struct Amounts {
        amount: Option<serde_json::Value>,
        genesis_credit: Option<serde_json::Value>,
    }
    let amounts: Amounts = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::unprocessable("invalid_body", format!("invalid fee: {e}")))?;
    check_amount_text("amount", amounts.amount.as_ref(), false)?;
    check_amount_text("genesis_credit", amounts.genesis_credit.as_ref(), true)?;
    serde_json::from_str(raw.get())
        .map_err(|e| ApiError::unprocessable("invalid_body", format!("invalid fee: {e}")))
}

// ------------------------------------------------------------ admin surface

async fn admin(shared: Arc<Shared>, request: Request<Incoming>) -> Reply {
    let call = match read_call(request, ADMIN_BODY_BYTES_MAX).await {
        Ok(call) => call,
        Err(error) => return error_reply(&error),
    };
    blocking(move || match serve_admin(&shared, &call) {
        Ok(reply) => reply,
        Err(error) => error_reply(&error),
    })
    .await
}

fn serve_admin(shared: &Shared, call: &Call) -> Result<Reply, ApiError> {
    let path = call.path.trim_start_matches("/_sim");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (&call.method, segments.as_slice()) {
        (&Method::GET, ["health"]) => Ok(json_reply(200, &serde_json::json!({"status": "ok"}))),
        (&Method::GET, ["stats"]) => Ok(json_reply(200, &lock(&shared.faults).stats)),
        (&Method::GET, ["faults"]) => Ok(json_reply(200, lock(&shared.faults).config())),
        (&Method::PUT, ["faults"]) => set_faults(shared, &call.body),
        (&Method::POST, ["reset"]) => {
            shared.reset();
            Ok(json_reply(200, &serde_json::json!({"status": "reset"})))
        }
        (&Method::POST, ["save"]) => save(shared),
        (&Method::POST, ["clock"]) => advance_clock(shared, &call.body),
        (&Method::GET, ["districts"]) => {
            let names: Vec<String> = lock(&shared.districts).keys().cloned().collect();
            Ok(json_reply(200, &names))
        }
        (&Method::POST, ["districts"]) => add_district(shared, &call.body),
        (&Method::POST, ["districts", name, "rotate-key"]) => rotate_key(shared, name, &call.body),
        (method, ["districts", name, action]) => district_admin(shared, method, name, action, call),
        _ => Err(ApiError::not_found("not_found", "no such admin resource")),
    }
}

fn set_faults(shared: &Shared, body: &[u8]) -> Result<Reply, ApiError> {
    let config: FaultConfig = parse_json(body)?;
    config
        .validate()
        .map_err(|message| ApiError::unprocessable("invalid_faults", message))?;
    let mut faults = lock(&shared.faults);
    faults.set_config(config);
    Ok(json_reply(200, faults.config()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockAdvance {
    advance_secs: i64,
}

/// Moves the server's clock forward (never back: timestamps stay monotonic).
fn advance_clock(shared: &Shared, body: &[u8]) -> Result<Reply, ApiError> {
    let ClockAdvance { advance_secs } = parse_json(body)?;
    if !(1..=CLOCK_ADVANCE_SECS_MAX).contains(&advance_secs) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("advance_secs must be 1 to {CLOCK_ADVANCE_SECS_MAX}"),
        ));
    }
    let offset = shared
        .clock_offset_secs
        .fetch_add(advance_secs, std::sync::atomic::Ordering::SeqCst)
        + advance_secs;
    Ok(json_reply(
        200,
        &serde_json::json!({"server_time": shared.now(), "offset_secs": offset}),
    ))
}

fn save(shared: &Shared) -> Result<Reply, ApiError> {
    if shared.state_file.is_none() {
        return Err(ApiError::unprocessable(
            "no_state_file",
            "the simulator has no state file",
        ));
    }
    shared
        .save()
        .map_err(|e| ApiError::new(500, "save_failed", e.to_string()))?;
    Ok(json_reply(200, &serde_json::json!({"status": "saved"})))
}

fn add_district(shared: &Shared, body: &[u8]) -> Result<Reply, ApiError> {
    let new: NewDistrict = parse_json(body)?;
    let name_ok = !new.district.is_empty()
        && new.district.len() <= DISTRICT_CHARS_MAX
        && new
            .district
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok || new.api_key.len() < 8 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "district must be 1-64 of A-Z a-z 0-9 - _, api_key at least 8 characters",
        ));
    }
    let mut keys = lock(&shared.keys);
    if keys.iter().any(|(_, key)| key.ct_eq(&new.api_key)) {
        return Err(ApiError::new(
            409,
            "key_in_use",
            "that API key is already registered",
        ));
    }
    keys.push((new.district.clone(), Secret::new(new.api_key)));
    lock(&shared.districts)
        .entry(new.district.clone())
        .or_default();
    Ok(json_reply(
        201,
        &serde_json::json!({"district": new.district}),
    ))
}

/// The vendor rotates a district's API key: the new key replaces every key
/// of the district, which are refused from now on.
fn rotate_key(shared: &Shared, name: &str, body: &[u8]) -> Result<Reply, ApiError> {
    let rotated: RotatedKey = parse_json(body)?;
    if rotated.api_key.len() < 8 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "api_key at least 8 characters",
        ));
    }
    let mut keys = lock(&shared.keys);
    if !keys.iter().any(|(district, _)| district == name) {
        return Err(ApiError::not_found(
            "district_not_found",
            format!("no district {name:?}"),
        ));
    }
    if keys.iter().any(|(_, key)| key.ct_eq(&rotated.api_key)) {
        return Err(ApiError::new(
            409,
            "key_in_use",
            "that API key is already registered",
        ));
    }
    keys.retain(|(district, _)| district != name);
    keys.push((name.to_string(), Secret::new(rotated.api_key)));
    Ok(json_reply(200, &serde_json::json!({"district": name})))
}

fn district_admin(
    shared: &Shared,
    method: &Method,
    name: &str,
    action: &str,
    call: &Call,
) -> Result<Reply, ApiError> {
    let mut districts = lock(&shared.districts);
    let state = districts.get_mut(name).ok_or_else(|| {
        ApiError::not_found("district_not_found", format!("no district {name:?}"))
    })?;
    match (method, action) {
        (&Method::GET, "summary") => Ok(json_reply(200, &state.summary(name))),
        (&Method::POST, "fees") => {
            let pushes: Vec<FeePush> = parse_json(&call.body)?;
            Ok(json_reply(200, &state.load(pushes, shared.now())?))
        }
        (&Method::POST, "generate") => {
            let spec: GenerateSpec = parse_json(&call.body)?;
            Ok(json_reply(200, &generate(state, &spec, shared.seed)?))
        }
        (&Method::POST, "actions") => {
            let batch: ActionBatch = parse_json(&call.body)?;
            apply_actions(state, batch, shared.now())
        }
        _ => Err(ApiError::not_found("not_found", "no such admin resource")),
    }
}

/// Applies actions in order; the first failure stops the batch and names
/// its index (earlier actions stay applied).
fn apply_actions(
    state: &mut District,
    batch: ActionBatch,
    now: NaiveDateTime,
) -> Result<Reply, ApiError> {
    let mut results = Vec::with_capacity(batch.actions.len());
    for (index, action) in batch.actions.into_iter().enumerate() {
        let outcome = state.apply(action, now).map_err(|e| ApiError {
            message: format!("action #{index}: {}", e.message),
            ..e
        })?;
        results.push(outcome);
    }
    Ok(json_reply(200, &ActionResults { results }))
}
