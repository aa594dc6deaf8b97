//! `HttpPortal`: the Community Pass client over HTTPS (reqwest, blocking).
//! The only module that knows the vendor's URLs, headers and JSON. It
//! verifies TLS (plain `http://` only for loopback hosts), bounds every
//! attempt with a connect timeout and a whole-attempt deadline (from
//! sending to the last body byte: reqwest's blocking timeout is per read,
//! so the body is read on a watched thread of `body_reader`'s pool, which a
//! trickling server cannot stretch), bounds every call (all attempts and waits) with a budget,
//! retries 5xx, 408, 429, timeouts and dropped connections with capped
//! exponential backoff and jitter at most `RETRIES_MAX` times — a
//! `Retry-After` longer than the call may still wait fails at once, and a
//! rejected TLS certificate or another 4xx is never retried — and turns
//! every amount on the wire into `Money` or a `Protocol` error naming the
//! record.

use std::net::IpAddr;
use std::sync::Once;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::atomic::Ordering;

use super::{
    CommunityPass, ConnectionCheck, FeeFilter, Page, PortalError, RejectedRecord, RetryCause,
    RetryCounter, RetryStats, TxnPage, TxnScope, UpsertOutcome, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX,
    RAW_RECORD_CHARS_MAX,
};
use crate::domain::{FeeId, FeePush, PatronBalance, UnmanagedFee, VendorFee, VendorTxn};
use crate::retry::{self, Exhausted, Failed, GaveUp};
use crate::secret::Secret;

pub use crate::retry::{RetryPolicy, RunBudget, RETRIES_MAX, RETRY_AFTER_MAX};
/// Connect timeout unless configured (`connect_timeout_secs`).
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Whole-attempt deadline unless configured (`request_timeout_secs`).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Budget of one call — every attempt and every wait between them —
/// unless configured (`call_budget_secs`).
pub const CALL_BUDGET_DEFAULT: Duration = Duration::from_secs(120);
/// The most bytes of a server's error message kept in an error.
const ERROR_MESSAGE_CHARS_MAX: usize = 300;
/// The header that marks an answer served from the idempotency store.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The request header carrying the idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The largest answer body read (a full page of 1,000 records is well
/// under 1 MiB); a larger one is a protocol error, not an allocation.
pub const RESPONSE_BYTES_MAX: u64 = 8 << 20;
/// The longest id (transaction or vendor fee) accepted from the vendor.
pub const VENDOR_ID_CHARS_MAX: usize = 64;
/// The longest payment method text accepted from the vendor.
pub const METHOD_CHARS_MAX: usize = 64;

/// Installs the `ring` rustls crypto provider once per process. reqwest is
/// built with `rustls-no-provider`, so a TLS client needs this first.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The retry policy of Community Pass calls unless configured: 8 retries,
/// backoff from 200 ms to 10 s, a `Retry-After` of up to 30 s honoured,
/// `CALL_BUDGET_DEFAULT` for the whole call.
pub fn retry_policy_default() -> RetryPolicy {
    RetryPolicy {
        retries: 8,
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(10),
        retry_after_max: Duration::from_secs(30),
        call_budget: CALL_BUDGET_DEFAULT,
    }
}

/// Everything `HttpPortal` needs. `Debug` shows the key redacted.
#[derive(Debug, Clone)]
pub struct HttpPortalConfig {
    /// e.g. `https://instantsync.example.com`; `http://` only for loopback.
    pub base_url: String,
    pub api_key: Secret,
    pub connect_timeout: Duration,
    /// The bound of one attempt, from sending to the last body byte.
    pub request_timeout: Duration,
    pub page_size: u32,
    /// Retries of one call; `retry.call_budget` bounds all its attempts
    /// and the waits between them.
    pub retry: RetryPolicy,
    /// The waiting between retries this client's run may spend, every
    /// call together.
    pub run_budget: RunBudget,
}

impl HttpPortalConfig {
    pub fn new(base_url: impl Into<String>, api_key: Secret) -> HttpPortalConfig {
        HttpPortalConfig {
            base_url: base_url.into(),
            api_key,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            page_size: PAGE_SIZE_DEFAULT,
            retry: retry_policy_default(),
            run_budget: RunBudget::default(),
        }
    }
}

/// The Community Pass client. Cheap to share across threads (`&self` calls).
pub struct HttpPortal {
    client: Client,
    base: Url,
    authorization: HeaderValue,
    api_key: Secret,
    page_size: u32,
    retry: RetryPolicy,
    run_budget: RunBudget,
    request_timeout: Duration,
    counter: RetryCounter,
    /// Set once the server answered that it has no batch fee write
    /// (`POST /v1/fee-upserts`): fees are then pushed one by one.
    no_batch_write: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for HttpPortal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPortal")
            .field("base", &self.base.as_str())
            .field("api_key", &self.api_key)
            .field("page_size", &self.page_size)
            .finish()
    }
}

/// Checks the base URL: https anywhere, http only on loopback, no
/// credentials in the URL.
pub fn check_base_url(text: &str) -> Result<Url, PortalError> {
    let config = |detail: String| PortalError::Config { detail };
    let url = Url::parse(text).map_err(|e| config(format!("base URL is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config("base URL must not carry credentials".to_string()));
    }
    if url.path().trim_end_matches('/').ends_with("/v1") {
        return Err(config(format!(
            "base URL {url} ends in /v1: give the server's root (e.g. https://{}/); the client adds /v1/... itself",
            url.host_str().unwrap_or("instantsync.example")
        )));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(config(format!(
            "plain http:// is allowed only for loopback hosts, not {:?}; use https://",
            url.host_str().unwrap_or("")
        ))),
        other => Err(config(format!("unsupported URL scheme {other:?}"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The server's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// A page decoded in one pass, the fast path for a page that keeps the
/// contract; any error sends the page through `RawPage` instead.
#[derive(Debug, Deserialize)]
struct TypedPage<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// A transaction page decoded in one pass (see `TypedPage`).
#[derive(Debug, Deserialize)]
struct TypedTxnPage {
    items: Vec<VendorTxn>,
    next_after: i64,
    has_more: bool,
}

/// A page as it arrives, items still undecoded so a bad one can be named.
#[derive(Debug, Deserialize)]
struct RawPage {
    items: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawTxnPage {
    items: Vec<Box<RawValue>>,
    next_after: i64,
    has_more: bool,
}

#[derive(Debug, Serialize)]
struct TestPushBody<'a> {
    nonce: &'a str,
}

/// A failed attempt, and why it may be retried (`None`: it is final).
struct Failure {
    error: PortalError,
    cause: Option<RetryCause>,
}

impl Failure {
    /// As the shared retry loop sees it: transient (with the server's
    /// `Retry-After`, if any) when it has a retry cause, else final.
    fn into_retry(self) -> Failed<Failure> {
        if self.cause.is_none() {
            return Failed::Final(self);
        }
        let after = match &self.error {
            PortalError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        };
        Failed::Transient { error: self, after }
    }
}

/// A successful answer: its headers and body bytes.
struct Answer {
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl HttpPortal {
    pub fn new(config: HttpPortalConfig) -> Result<HttpPortal, PortalError> {
        install_crypto_provider();
        let base = check_base_url(&config.base_url)?;
        if !(1..=PAGE_SIZE_MAX).contains(&config.page_size) {
            return Err(PortalError::Config {
                detail: format!("page size must be 1..={PAGE_SIZE_MAX}"),
            });
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose())).map_err(
                |_| PortalError::Config {
                    detail: "API key contains characters not allowed in a header".to_string(),
                },
            )?;
        authorization.set_sensitive(true);
        let mut builder = Client::builder();
        if base.scheme() == "http" {
            // Plain http is only ever loopback: skip loading the system's
            // trust store (tens of milliseconds per process start).
            builder = builder.tls_certs_only(Vec::new());
        }
        let client = builder
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cpsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PortalError::Config {
                detail: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(HttpPortal {
            client,
            base,
            authorization,
            api_key: config.api_key,
            page_size: config.page_size,
            retry: config.retry,
            run_budget: config.run_budget,
            request_timeout: config.request_timeout,
            counter: RetryCounter::default(),
            no_batch_write: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Gives the next run its whole allowance of waiting between retries
    /// (for a client that serves many runs, as `watch`'s does).
    pub fn renew_run_budget(&self) {
        self.run_budget.renew();
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base_path}{path}"));
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.client
            .request(method, url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// Sends a request, retrying transient failures within the policy, the
    /// call's budget and the run's (`crate::retry`). `record` names what is
    /// being fetched, for errors.
    fn execute(
        &self,
        record: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Answer, PortalError> {
        let answer = self.execute_with_retries(record, build);
        crate::failpoint::operation("a Community Pass call returned");
        answer
    }

    fn execute_with_retries(
        &self,
        record: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Answer, PortalError> {
        self.counter.record_request();
        let outcome = retry::run(
            &self.retry,
            &self.run_budget,
            |_, call_deadline| {
                let attempt_end = (Instant::now() + self.request_timeout).min(call_deadline);
                self.attempt(record, build(), attempt_end)
                    .map_err(|failure| failure.into_retry())
            },
            |Failure { error, cause }, attempt, delay| {
                if let Some(cause) = cause {
                    self.counter.record_retry(*cause);
                }
                tracing::warn!(
                    record,
                    cause = ?cause,
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    error = %error,
                    "retrying a Community Pass call"
                );
            },
        );
        outcome.map_err(|gave_up| match gave_up {
            GaveUp::Final(failure) => failure.error,
            GaveUp::Exhausted {
                last: Failure { error, .. },
                attempts,
                elapsed,
                why,
            } => with_note(
                error,
                &format!(
                    "gave up after {attempts} attempt(s) in {:.1}s: {why}{}",
                    elapsed.as_secs_f64(),
                    match why {
                        Exhausted::CallBudget { .. } | Exhausted::RetryAfterTooLong { .. } =>
                            " (call_budget_secs)",
                        _ => "",
                    }
                ),
            ),
        })
    }

    /// One attempt, over by `deadline` whatever the server does: the send
    /// (connect, request, headers) is bounded by reqwest's total timeout,
    /// the body by a watchdog (`response_body`).
    fn attempt(
        &self,
        record: &str,
        request: RequestBuilder,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let allowed = deadline.saturating_duration_since(Instant::now());
        if allowed.is_zero() {
            return Err(self.deadline_passed(record));
        }
        let response = request
            .timeout(allowed)
            .send()
            .map_err(|e| self.transport_error(&e, allowed))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = self.response_body(record, response, deadline)?;
        if status.is_success() {
            return Ok(Answer { headers, body });
        }
        let cause = status_retry_cause(status);
        let error = self.status_error(record, status, &headers, &body);
        Err(Failure { error, cause })
    }

    fn deadline_passed(&self, record: &str) -> Failure {
        Failure {
            error: PortalError::Timeout {
                detail: format!(
                    "{record}: the answer was not complete within the deadline \
                     (request_timeout_secs = {}s for one attempt, call_budget_secs = {}s \
                     for the call); a server sending slowly cannot stretch it",
                    self.request_timeout.as_secs(),
                    self.retry.call_budget.as_secs()
                ),
            },
            cause: Some(RetryCause::Timeout),
        }
    }

    /// A failure below HTTP: a timeout, a refused or dropped connection
    /// (retried), a rejected TLS certificate or a request that cannot be
    /// built (final: a retry cannot fix them).
    fn transport_error(&self, error: &reqwest::Error, allowed: Duration) -> Failure {
        let detail = self.scrub(&error_chain(error));
        if error.is_timeout() {
            let phase = if error.is_connect() {
                "connecting"
            } else {
                "waiting for the answer"
            };
            Failure {
                error: PortalError::Timeout {
                    detail: format!(
                        "no answer within {:.1}s while {phase} (connect_timeout_secs, \
                         request_timeout_secs): {detail}",
                        allowed.as_secs_f64()
                    ),
                },
                cause: Some(RetryCause::Timeout),
            }
        } else if error.is_builder() {
            Failure {
                error: PortalError::Config { detail },
                cause: None,
            }
        } else if is_certificate_error(error) {
            Failure {
                error: PortalError::Config {
                    detail: format!(
                        "the server's TLS certificate was rejected (not retried: a retry \
                         cannot fix it; check base_url and the server's certificate): {detail}"
                    ),
                },
                cause: None,
            }
        } else {
            Failure {
                error: PortalError::Unavailable {
                    detail: format!("connection failed: {detail}"),
                },
                cause: Some(RetryCause::Connection),
            }
        }
    }

    fn status_error(
        &self,
        record: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> PortalError {
        let error = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(parsed) => parsed,
            // Not an error of the API itself: most often a base URL that
            // points somewhere else (e.g. one ending in /v1). Name it.
            Err(_) => ErrorBody {
                code: status.as_str().to_string(),
                message: format!(
                    "{} (not an answer of the Community Pass API: is the base URL {} right?)",
                    status.canonical_reason().unwrap_or(""),
                    self.base
                ),
            },
        };
        self.api_error(record, status, headers, error)
    }

    /// The error an API answer of this status and error body means.
    fn api_error(
        &self,
        record: &str,
        status: StatusCode,
        headers: &HeaderMap,
        ErrorBody { code, message }: ErrorBody,
    ) -> PortalError {
        let code = self.scrub(&truncate(&code));
        let message = self.scrub(&truncate(&message));
        match status.as_u16() {
            401 | 403 => PortalError::Unauthorized { code, message },
            404 => PortalError::NotFound {
                what: record.to_string(),
                code,
                message,
            },
            409 => PortalError::Conflict { code, message },
            408 => PortalError::Timeout {
                detail: format!("408 {code}: {message}"),
            },
            400 | 422 => PortalError::Validation {
                status: status.as_u16(),
                code,
                message,
            },
            429 => PortalError::RateLimited {
                retry_after: retry_after(headers),
                message,
            },
            500..=599 => PortalError::Unavailable {
                detail: format!("{} {code}: {message}", status.as_u16()),
            },
            other => PortalError::protocol(
                record,
                format!("unexpected HTTP status {other} ({code}: {message})"),
            ),
        }
    }

    /// Removes the API key from text that came from elsewhere, in case a
    /// server or a library echoes it.
    fn scrub(&self, text: &str) -> String {
        let key = self.api_key.expose();
        if key.is_empty() {
            return text.to_string();
        }
        text.replace(key, crate::secret::REDACTED)
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        record: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, PortalError> {
        let body = self.get_body(record, path, query)?;
        decode(record, &body)
    }

    fn get_body(
        &self,
        record: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<bytes::Bytes, PortalError> {
        let url = self.url(path, query);
        let answer = self.execute(record, || self.request(Method::GET, url.clone()))?;
        Ok(answer.body)
    }

    fn get_page<T: DeserializeOwned>(
        &self,
        listing: &str,
        path: &str,
        kind: &str,
        id_field: &str,
        query: Vec<(&str, String)>,
    ) -> Result<Page<T>, PortalError> {
        let body = self.get_body(listing, path, &query)?;
        // One pass for a good page; item by item, to name a bad record,
        // only when that fails (same items, same errors).
        if let Ok(page) = serde_json::from_slice::<TypedPage<T>>(&body) {
            return Ok(Page {
                items: page.items,
                next_cursor: page.next_cursor,
                rejected: Vec::new(),
            });
        }
        let raw: RawPage = decode(listing, &body)?;
        let (items, rejected) = decode_each(raw.items, kind, id_field);
        Ok(Page {
            items,
            next_cursor: raw.next_cursor,
            rejected,
        })
    }

    fn page_query<'a>(&self, cursor: Option<&str>) -> Vec<(&'a str, String)> {
        let mut query = vec![("limit", self.page_size.to_string())];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_string()));
        }
        query
    }
}

/// How reading a body ended, on the watchdog thread.
enum BodyRead {
    Complete(Vec<u8>),
    TooLarge,
    Failed(std::io::Error),
}

/// Reads at most `RESPONSE_BYTES_MAX` bytes of `response`. Each read waits
/// at most the attempt's timeout (reqwest's per-read bound), so the thread
/// doing this ends on its own even when the watchdog gave up on it.
fn read_body(response: Response) -> BodyRead {
    use std::io::Read;
    let mut body = Vec::new();
    match response.take(RESPONSE_BYTES_MAX + 1).read_to_end(&mut body) {
        Ok(_) if body.len() as u64 > RESPONSE_BYTES_MAX => BodyRead::TooLarge,
        Ok(_) => BodyRead::Complete(body),
        Err(error) => BodyRead::Failed(error),
    }
}

impl HttpPortal {
    /// Reads the body by `deadline`, at most `RESPONSE_BYTES_MAX` bytes: a
    /// larger answer is final (not retried); a connection cut mid-body or
    /// a body not complete by the deadline is retried. The read runs on a
    /// thread watched with the remaining time, because a blocking read
    /// cannot be interrupted and reqwest bounds each read, not the whole.
    fn response_body(
        &self,
        record: &str,
        response: Response,
        deadline: Instant,
    ) -> Result<bytes::Bytes, Failure> {
        let too_large = || Failure {
            error: PortalError::protocol(
                record,
                format!(
                    "the answer is larger than RESPONSE_BYTES_MAX = {RESPONSE_BYTES_MAX} bytes"
                ),
            ),
            cause: None,
        };
        if response
            .content_length()
            .is_some_and(|n| n > RESPONSE_BYTES_MAX)
        {
            return Err(too_large());
        }
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let reader = super::body_reader::run(Box::new(move || {
            let _ = sender.send(read_body(response));
        }));
        if let Err(error) = reader {
            return Err(Failure {
                error: PortalError::Unavailable {
                    detail: format!("cannot start a thread to read the answer: {error}"),
                },
                cause: Some(RetryCause::Connection),
            });
        }
        let allowed = deadline.saturating_duration_since(Instant::now());
        let read = match receiver.recv_timeout(allowed) {
            Ok(read) => read,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(self.deadline_passed(record))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                BodyRead::Failed(std::io::Error::other("the reader thread ended"))
            }
        };
        match read {
            BodyRead::Complete(body) => Ok(bytes::Bytes::from(body)),
            BodyRead::TooLarge => Err(too_large()),
            BodyRead::Failed(error) => {
                let timed_out = error.kind() == std::io::ErrorKind::TimedOut;
                let detail = self.scrub(&error.to_string());
                Err(Failure {
                    error: if timed_out {
                        PortalError::Timeout { detail }
                    } else {
                        PortalError::Unavailable {
                            detail: format!("connection failed while reading the answer: {detail}"),
                        }
                    },
                    cause: Some(if timed_out {
                        RetryCause::Timeout
                    } else {
                        RetryCause::Connection
                    }),
                })
            }
        }
    }
}

/// `error` with `note` added to its text (for the retryable kinds, the
/// only ones a retry loop gives up on).
fn with_note(error: PortalError, note: &str) -> PortalError {
    match error {
        PortalError::Timeout { detail } => PortalError::Timeout {
            detail: format!("{detail} ({note})"),
        },
        PortalError::Unavailable { detail } => PortalError::Unavailable {
            detail: format!("{detail} ({note})"),
        },
        PortalError::RateLimited {
            retry_after,
            message,
        } => PortalError::RateLimited {
            retry_after,
            message: format!("{message} ({note})"),
        },
        other => other,
    }
}

/// Whether a transport error is a rejected TLS certificate, which no retry
/// can fix: a `rustls::Error` about certificates anywhere in the chain
/// (rustls' error travels inside an `io::Error`), or its words.
fn is_certificate_error(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let rustls_error = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = rustls_error {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::InvalidCertRevocationList(_)
            );
        }
        source = cause.source();
    }
    error_chain(error)
        .to_ascii_lowercase()
        .contains("certificate")
}

/// Why an HTTP status is worth retrying, or `None` when it is final.
fn status_retry_cause(status: StatusCode) -> Option<RetryCause> {
    match status.as_u16() {
        408 => Some(RetryCause::Timeout),
        429 => Some(RetryCause::RateLimited),
        500..=599 => Some(RetryCause::ServerError),
        _ => None,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn truncate(text: &str) -> String {
    text.chars().take(ERROR_MESSAGE_CHARS_MAX).collect()
}

/// The error with its sources, e.g. "error sending request: connection closed".
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn decode<T: DeserializeOwned>(record: &str, body: &[u8]) -> Result<T, PortalError> {
    serde_json::from_slice(body).map_err(|e| PortalError::protocol(record, e.to_string()))
}

/// Decodes each item on its own (straight from its raw JSON text, with no
/// intermediate tree), so a malformed one is reported with its kind and id.
fn decode_items<T: DeserializeOwned>(
    items: Vec<Box<RawValue>>,
    kind: &str,
    id_field: &str,
) -> Result<Vec<T>, PortalError> {
    items
        .into_iter()
        .map(|item| {
            serde_json::from_str(item.get()).map_err(|e| {
                let id = raw_record_id(&item, id_field);
                PortalError::protocol(format!("{kind} {id}"), e.to_string())
            })
        })
        .collect()
}

/// Decodes each record of a fee or balance page on its own; a bad one is
/// set aside with its id (when readable) and reason, and the rest go on.
fn decode_each<T: DeserializeOwned>(
    items: Vec<Box<RawValue>>,
    kind: &str,
    id_field: &str,
) -> (Vec<T>, Vec<RejectedRecord>) {
    let mut good = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for item in items {
        match serde_json::from_str::<T>(item.get()) {
            Ok(record) => good.push(record),
            Err(error) => {
                let tree: Value = serde_json::from_str(item.get()).unwrap_or(Value::Null);
                let id = match tree.get(id_field) {
                    Some(Value::String(text)) if valid_id(text) => Some(text.clone()),
                    Some(Value::Number(number)) => Some(number.to_string()),
                    _ => None,
                };
                rejected.push(RejectedRecord {
                    record: format!("{kind} {}", record_id(&tree, id_field)),
                    id,
                    reason: error.to_string(),
                    raw: item.get().chars().take(RAW_RECORD_CHARS_MAX).collect(),
                });
            }
        }
    }
    (good, rejected)
}

/// Decodes each transaction on its own and checks it against the contract;
/// a bad one is set aside with its reason and the rest go on.
fn decode_transactions(items: Vec<Box<RawValue>>) -> (Vec<VendorTxn>, Vec<RejectedRecord>) {
    let mut good = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for item in items {
        let decoded = serde_json::from_str::<VendorTxn>(item.get())
            .map_err(|e| e.to_string())
            .and_then(|txn| check_txn(&txn).map(|()| txn));
        match decoded {
            Ok(txn) => good.push(txn),
            Err(reason) => rejected.push(rejected_txn(&item, reason)),
        }
    }
    (good, rejected)
}

/// What is kept of a transaction that breaks the contract (only bad records
/// are parsed into a tree, to find their id).
fn rejected_txn(item: &RawValue, reason: String) -> RejectedRecord {
    let tree: Value = serde_json::from_str(item.get()).unwrap_or(Value::Null);
    let id = match tree.get("id") {
        Some(Value::String(text)) if valid_id(text) => Some(text.clone()),
        _ => None,
    };
    RejectedRecord {
        record: format!("transaction {}", record_id(&tree, "id")),
        id,
        reason,
        raw: item.get().chars().take(RAW_RECORD_CHARS_MAX).collect(),
    }
}

fn raw_record_id(item: &RawValue, id_field: &str) -> String {
    let tree: Value = serde_json::from_str(item.get()).unwrap_or(Value::Null);
    record_id(&tree, id_field)
}

fn valid_id(text: &str) -> bool {
    let chars = text.chars().count();
    (1..=VENDOR_ID_CHARS_MAX).contains(&chars) && !text.chars().any(char::is_control)
}

/// What the contract asks of a transaction beyond its JSON shape: a
/// positive amount, and ids and method of bounded length without control
/// characters (they end up in Genesis text columns).
fn check_txn(txn: &VendorTxn) -> Result<(), String> {
    if !txn.amount.is_positive() {
        return Err(format!("amount {} is not positive", txn.amount));
    }
    if !valid_id(&txn.id.0) {
        return Err(format!(
            "id must be 1 to {VENDOR_ID_CHARS_MAX} characters without control characters"
        ));
    }
    if !valid_id(&txn.vendor_fee_id) {
        return Err(format!(
            "vendor_fee_id must be 1 to {VENDOR_ID_CHARS_MAX} characters without control characters"
        ));
    }
    let method_chars = txn.method.chars().count();
    if method_chars > METHOD_CHARS_MAX || txn.method.chars().any(char::is_control) {
        return Err(format!(
            "method must be at most {METHOD_CHARS_MAX} characters without control characters"
        ));
    }
    Ok(())
}

fn record_id(item: &Value, id_field: &str) -> String {
    match item.get(id_field) {
        Some(Value::String(text)) => truncate(text),
        Some(Value::Number(number)) => number.to_string(),
        _ => format!("(no {id_field})"),
    }
}

/// Fee ids as the `genesis_fee_ids` query value.
fn id_list(ids: &[FeeId]) -> String {
    let texts: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
    texts.join(",")
}

fn random_nonce() -> String {
    let bytes: [u8; 12] = rand::thread_rng().gen();
    super::hex(&bytes)
}

/// The most fees one `POST /v1/fee-upserts` carries (the contract's
/// bound).
pub const UPSERT_BATCH_MAX: usize = 500;

/// One item of a batch's answer: the status `PUT /v1/fees/{id}` would have
/// answered, with its result or error.
#[derive(Debug, Deserialize)]
struct BatchItemAnswer {
    status: u16,
    #[serde(default)]
    replayed: bool,
    result: Option<UpsertOutcome>,
    error: Option<ErrorBody>,
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    results: Vec<BatchItemAnswer>,
}

/// Why a batch write gave no per-item answers.
enum BatchRefused {
    /// The server has no such route (404 or 405): push one by one.
    NoSuchRoute(PortalError),
    /// The call failed as a whole (after its retries): every item failed.
    Failed(PortalError),
}

impl HttpPortal {
    /// `POST /v1/fee-upserts` with these fees, retried as a whole (each
    /// item's idempotency key makes a retry a replay of what was applied).
    fn upsert_batch(
        &self,
        items: &[(&FeePush, &str)],
    ) -> Result<Vec<Result<UpsertOutcome, PortalError>>, BatchRefused> {
        let first = items[0].0.genesis_fee_id;
        let record = format!("{} fees from fee {first}", items.len());
        let url = self.url("/v1/fee-upserts", &[]);
        let body = batch_body(items);
        let answer = self
            .execute(&record, || {
                self.request(Method::POST, url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .map_err(|error| match error {
                PortalError::NotFound { .. } => BatchRefused::NoSuchRoute(error),
                PortalError::Protocol { ref detail, .. } if detail.contains("405") => {
                    BatchRefused::NoSuchRoute(error)
                }
                other => BatchRefused::Failed(other),
            })?;
        let answer: BatchAnswer = decode(&record, &answer.body).map_err(BatchRefused::Failed)?;
        if answer.results.len() != items.len() {
            return Err(BatchRefused::Failed(PortalError::protocol(
                &record,
                format!(
                    "{} results answered for {} fees",
                    answer.results.len(),
                    items.len()
                ),
            )));
        }
        Ok(items
            .iter()
            .zip(answer.results)
            .map(|((fee, _), item)| self.batch_item(fee, item))
            .collect())
    }

    /// One item of a batch's answer as `upsert_fee` would have returned it.
    fn batch_item(
        &self,
        fee: &FeePush,
        item: BatchItemAnswer,
    ) -> Result<UpsertOutcome, PortalError> {
        let record = format!("fee {}", fee.genesis_fee_id);
        let status = StatusCode::from_u16(item.status).map_err(|_| {
            PortalError::protocol(&record, format!("status {} is not HTTP", item.status))
        })?;
        match (status.is_success(), item.result, item.error) {
            (true, Some(mut outcome), _) => {
                if outcome.genesis_fee_id != fee.genesis_fee_id {
                    return Err(PortalError::protocol(
                        record,
                        "the answer is about another fee",
                    ));
                }
                outcome.replayed = item.replayed;
                Ok(outcome)
            }
            (false, _, Some(error)) => {
                Err(self.api_error(&record, status, &HeaderMap::new(), error))
            }
            _ => Err(PortalError::protocol(
                record,
                format!("status {} without its result or error", item.status),
            )),
        }
    }
}

/// `{"items":[{"idempotency_key":…,"fee":<the fee's canonical body>},…]}`.
fn batch_body(items: &[(&FeePush, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(items.len() * 512);
    body.extend_from_slice(b"{\"items\":[");
    for (index, (fee, key)) in items.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"idempotency_key\":");
        serde_json::to_writer(&mut body, key).expect("a string always serializes");
        body.extend_from_slice(b",\"fee\":");
        body.extend_from_slice(&super::canonical_body(fee));
        body.push(b'}');
    }
    body.extend_from_slice(b"]}");
    body
}

impl CommunityPass for HttpPortal {
    fn test_pull(&self) -> Result<ConnectionCheck, PortalError> {
        self.get_json("connection test pull", "/v1/connection/test-pull", &[])
    }

    fn test_push(&self) -> Result<ConnectionCheck, PortalError> {
        let nonce = random_nonce();
        let url = self.url("/v1/connection/test-push", &[]);
        let record = "connection test push";
        let answer = self.execute(record, || {
            self.request(Method::POST, url.clone())
                .json(&TestPushBody { nonce: &nonce })
        })?;
        let check: ConnectionCheck = decode(record, &answer.body)?;
        if check.echo.as_deref() != Some(nonce.as_str()) {
            return Err(PortalError::protocol(
                record,
                "the server did not echo the nonce",
            ));
        }
        Ok(check)
    }

    fn upsert_fee(
        &self,
        fee: &FeePush,
        idempotency_key: &str,
    ) -> Result<UpsertOutcome, PortalError> {
        let record = format!("fee {}", fee.genesis_fee_id);
        let url = self.url(&format!("/v1/fees/{}", fee.genesis_fee_id), &[]);
        let body = super::canonical_body(fee);
        let answer = self.execute(&record, || {
            self.request(Method::PUT, url.clone())
                .header(IDEMPOTENCY_KEY_HEADER, idempotency_key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })?;
        let mut outcome: UpsertOutcome = decode(&record, &answer.body)?;
        if outcome.genesis_fee_id != fee.genesis_fee_id {
            return Err(PortalError::protocol(
                record,
                "the answer is about another fee",
            ));
        }
        outcome.replayed = answer
            .headers
            .get(REPLAYED_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        Ok(outcome)
    }

    fn upsert_fees(&self, items: &[(&FeePush, &str)]) -> Vec<Result<UpsertOutcome, PortalError>> {
        if items.len() <= 1 || self.no_batch_write.load(Ordering::Relaxed) {
            return items
                .iter()
                .map(|(fee, key)| self.upsert_fee(fee, key))
                .collect();
        }
        match self.upsert_batch(items) {
            Ok(results) => results,
            Err(BatchRefused::NoSuchRoute(error)) => {
                tracing::info!(error = %error, "Community Pass has no batch fee write; pushing fees one by one");
                self.no_batch_write.store(true, Ordering::Relaxed);
                self.upsert_fees(items)
            }
            // Unreachable, busy or not let in: every fee alone would fail
            // the same way, so each keeps that error and stays pending.
            Err(BatchRefused::Failed(
                error @ (PortalError::Unavailable { .. }
                | PortalError::Timeout { .. }
                | PortalError::RateLimited { .. }
                | PortalError::Unauthorized { .. }
                | PortalError::Config { .. }),
            )) => items.iter().map(|_| Err(error.clone())).collect(),
            // The batch was refused as a whole (one fee broke the contract,
            // or an answer no fee can be held to): each fee alone, so a
            // refusal lands on its own fee and never on the other 499.
            Err(BatchRefused::Failed(_)) => items
                .iter()
                .map(|(fee, key)| self.upsert_fee(fee, key))
                .collect(),
        }
    }

    fn upsert_batch_max(&self) -> usize {
        if self.no_batch_write.load(Ordering::Relaxed) {
            1
        } else {
            UPSERT_BATCH_MAX
        }
    }

    fn fee(&self, id: FeeId) -> Result<VendorFee, PortalError> {
        let record = format!("fee {id}");
        let value: Box<RawValue> = self.get_json(&record, &format!("/v1/fees/{id}"), &[])?;
        let mut fees: Vec<VendorFee> = decode_items(vec![value], "fee", "genesis_fee_id")?;
        fees.pop()
            .ok_or_else(|| PortalError::protocol(record, "empty answer"))
    }

    fn fees_page(
        &self,
        filter: FeeFilter<'_>,
        cursor: Option<&str>,
    ) -> Result<Page<VendorFee>, PortalError> {
        let mut query = self.page_query(cursor);
        match filter {
            FeeFilter::All => {}
            FeeFilter::Student(student) => query.push(("student_id", student.to_string())),
            FeeFilter::Ids(ids) => query.push(("genesis_fee_ids", id_list(ids))),
            FeeFilter::UpdatedSince(since) => query.push((
                "updated_since",
                since
                    .and_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            )),
        }
        self.get_page("fee listing", "/v1/fees", "fee", "genesis_fee_id", query)
    }

    fn unmanaged_fees_page(&self, cursor: Option<&str>) -> Result<Page<UnmanagedFee>, PortalError> {
        let query = self.page_query(cursor);
        self.get_page(
            "unmanaged fee listing",
            "/v1/unmanaged-fees",
            "unmanaged fee",
            "vendor_fee_id",
            query,
        )
    }

    fn transactions_page(&self, scope: TxnScope<'_>, after: i64) -> Result<TxnPage, PortalError> {
        let mut query = vec![
            ("after", after.to_string()),
            ("limit", self.page_size.to_string()),
        ];
        match scope {
            TxnScope::All => {}
            TxnScope::Student(id) => query.push(("student_id", id.to_string())),
            TxnScope::Guardian(id) => query.push(("guardian_id", id.to_string())),
            TxnScope::Fees(ids) => query.push(("genesis_fee_ids", id_list(ids))),
        }
        let body = self.get_body("transaction cursor", "/v1/transactions", &query)?;
        // One pass for a page whose every transaction keeps the contract;
        // otherwise item by item, setting the bad ones aside.
        if let Ok(page) = serde_json::from_slice::<TypedTxnPage>(&body) {
            if page.items.iter().all(|txn| check_txn(txn).is_ok()) {
                return Ok(TxnPage {
                    items: page.items,
                    next_after: page.next_after,
                    has_more: page.has_more,
                    rejected: Vec::new(),
                });
            }
        }
        let raw: RawTxnPage = decode("transaction cursor", &body)?;
        let (items, rejected) = decode_transactions(raw.items);
        Ok(TxnPage {
            items,
            next_after: raw.next_after,
            has_more: raw.has_more,
            rejected,
        })
    }

    fn balances_page(&self, cursor: Option<&str>) -> Result<Page<PatronBalance>, PortalError> {
        let query = self.page_query(cursor);
        self.get_page(
            "balance listing",
            "/v1/balances",
            "patron",
            "patron_id",
            query,
        )
    }

    fn retry_stats(&self) -> RetryStats {
        self.counter.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_ending_in_v1_is_refused_with_the_fix() {
        let error = check_base_url("https://cp.example/v1")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("ends in /v1") && error.contains("https://cp.example/"),
            "{error}"
        );
        assert!(check_base_url("https://cp.example/").is_ok());
        assert!(check_base_url("https://cp.example/district/v10").is_ok());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_base_url("https://cp.example.com").is_ok());
        assert!(check_base_url("http://127.0.0.1:8080").is_ok());
        assert!(check_base_url("http://localhost:8080/api").is_ok());
        assert!(check_base_url("http://[::1]:8080").is_ok());
        let err = check_base_url("http://cp.example.com").unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(check_base_url("https://user:pw@cp.example.com").is_err());
        assert!(check_base_url("ftp://cp.example.com").is_err());
    }

    #[test]
    fn debug_of_client_and_config_hides_the_key() {
        let config = HttpPortalConfig::new("http://127.0.0.1:1", Secret::new("sk_hidden_42"));
        assert!(!format!("{config:?}").contains("sk_hidden_42"));
        let portal = HttpPortal::new(config).unwrap();
        assert!(!format!("{portal:?}").contains("sk_hidden_42"));
    }
}
