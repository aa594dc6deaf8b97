//! Contract tests: the real client (`HttpPortal`) against the real simulator
//! over loopback HTTP, for every endpoint and every error class, plus exactly-
//! once paging under faults. `CPSYNC_CONTRACT_FEES` / `_TXNS` / `_PAGE` size
//! the faulty full read (defaults 5,000 / 4,000 / 100; the acceptance run is
//! 500,000 / 400,000 / 1,000 in release mode). The ignored `prism_*` test
//! runs the client against `prism mock` at `CPSYNC_PRISM_URL`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use cpsync::domain::{FeeId, FeePush, FeeStatus, GuardianId, StudentId, VendorFeeStatus};
use cpsync::money::Money;
use cpsync::portal::http::{HttpPortal, HttpPortalConfig, RetryPolicy};
use cpsync::portal::{
    all_balances, all_fees, all_unmanaged_fees, fees_by_ids, fees_where, intent_key, push_digest,
    transactions_after, transactions_of_fees, CommunityPass, FeeFilter, PortalError, TxnScope,
    FEE_IDS_PER_REQUEST_MAX,
};
use cpsync::secret::Secret;
use cpsync::sim::{AdminClient, FaultConfig, GenerateSpec, SimConfig, SimHandle, Simulator};

const TEST_KEY: &str = "sk_test_CONTRACT_5b1e0c9d";

/// Fails if the test API key appears in an error's message or Debug form.
fn assert_no_key(error: &PortalError) {
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(TEST_KEY), "API key leaked: {shown}");
}

fn fast_retry(retries: u32) -> RetryPolicy {
    RetryPolicy {
        retries,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        retry_after_max: Duration::from_secs(2),
        call_budget: Duration::from_secs(120),
    }
}

fn client(base_url: &str, key: &str, retries: u32, page_size: u32) -> HttpPortal {
    let mut config = HttpPortalConfig::new(base_url, Secret::new(key));
    config.retry = fast_retry(retries);
    config.page_size = page_size;
    config.request_timeout = Duration::from_secs(10);
    let portal = HttpPortal::new(config).expect("client config is valid");
    assert!(!format!("{portal:?}").contains(TEST_KEY));
    portal
}

fn start(seed: u64) -> (SimHandle, AdminClient) {
    let mut config = SimConfig::new(Secret::new(TEST_KEY));
    config.seed = seed;
    let handle = Simulator::start(config).expect("simulator starts");
    let admin = handle.admin().expect("admin client");
    (handle, admin)
}

fn push(id: i64, student: i64, cents: i64) -> FeePush {
    FeePush {
        genesis_fee_id: FeeId(id),
        student_id: StudentId(student),
        patron_id: format!("S{student}"),
        guardian_ids: vec![GuardianId(student * 10)],
        category: "BUS".into(),
        school: "HS".into(),
        description: "Bus pass".into(),
        amount: Money::from_cents(cents),
        genesis_credit: Money::ZERO,
        status: FeeStatus::Open,
        fee_date: NaiveDate::from_ymd_opt(2024, 9, 1).unwrap(),
        due_date: NaiveDate::from_ymd_opt(2024, 10, 1),
    }
}

fn generate(admin: &AdminClient, fees: u32, transactions: u32, unmanaged: u32) {
    let spec = GenerateSpec {
        fees,
        transactions,
        unmanaged_fees: unmanaged,
        students: None,
        first_fee_id: 1,
        seed: Some(11),
    };
    admin.generate(&spec).expect("generate");
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

#[test]
fn connection_tests_pull_and_push() {
    let (sim, _admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    assert_eq!(portal.test_pull().unwrap().district, "default");
    let pushed = portal.test_push().unwrap();
    assert!(pushed.echo.is_some());
    assert_eq!(sim.stats().requests, 2);
}

#[test]
fn upsert_is_idempotent_and_conflicts_on_a_reused_key() {
    let (sim, _admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    let fee = push(1, 5, 2_500);
    let key = first_intent_key(&fee);
    let first = portal.upsert_fee(&fee, &key).unwrap();
    assert!(first.created && !first.replayed);
    assert_eq!(first.balance, Money::from_cents(2_500));
    let again = portal.upsert_fee(&fee, &key).unwrap();
    assert!(again.replayed, "same key and body is a replay");
    assert_eq!(
        (again.created, &again.vendor_fee_id),
        (true, &first.vendor_fee_id)
    );

    let changed = push(1, 5, 3_000);
    let conflict = portal.upsert_fee(&changed, &key).unwrap_err();
    assert!(
        matches!(&conflict, PortalError::Conflict { code, .. } if code == "idempotency_conflict"),
        "{conflict:?}"
    );
    assert_no_key(&conflict);
    let updated = portal
        .upsert_fee(&changed, &first_intent_key(&changed))
        .unwrap();
    assert!(!updated.created && !updated.replayed);
    assert_eq!(updated.amount, Money::from_cents(3_000));
    assert_eq!(
        portal.fee(FeeId(1)).unwrap().amount,
        Money::from_cents(3_000)
    );
}

/// Each fee with its key, as `upsert_fees` takes them.
fn items_of<'a>(fees: &'a [FeePush], keys: &'a [String]) -> Vec<(&'a FeePush, &'a str)> {
    fees.iter()
        .zip(keys)
        .map(|(f, k)| (f, k.as_str()))
        .collect()
}

/// `POST /v1/fee-upserts`: each item as `PUT /v1/fees/{id}` would answer
/// it, in order; a replay, a conflict or an invalid fee touches only its
/// own item.
#[test]
fn a_batch_upsert_answers_each_fee_in_order() {
    let (sim, admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    assert_eq!(
        portal.upsert_batch_max(),
        cpsync::portal::http::UPSERT_BATCH_MAX
    );
    let fees = [push(1, 5, 2_500), push(2, 5, 1_000), push(3, 6, 700)];
    let keys: Vec<String> = fees.iter().map(first_intent_key).collect();
    let items = items_of(&fees, &keys);
    let first = portal.upsert_fees(&items);
    assert_eq!(first.len(), 3);
    for (fee, result) in fees.iter().zip(&first) {
        let outcome = result.as_ref().unwrap();
        assert_eq!(outcome.genesis_fee_id, fee.genesis_fee_id, "in order");
        assert!(outcome.created && !outcome.replayed);
        assert_eq!(outcome.amount, fee.amount);
    }
    assert_eq!(sim.stats().requests, 1, "one call for three fees");

    let changed = push(2, 5, 1_500);
    let mut refund_too_large = push(7, 6, 1_000);
    refund_too_large.genesis_credit = Money::from_cents(-5_000);
    let refund_key = first_intent_key(&refund_too_large);
    let new_fee = push(4, 6, 900);
    let new_key = first_intent_key(&new_fee);
    let again: Vec<(&FeePush, &str)> = vec![
        (&fees[0], &keys[0]),
        (&changed, &keys[1]),
        (&new_fee, &new_key),
        (&fees[2], &keys[2]),
        (&refund_too_large, &refund_key),
    ];
    let results = portal.upsert_fees(&again);
    let replayed = results[0].as_ref().unwrap();
    assert!(replayed.replayed && replayed.created, "{replayed:?}");
    assert!(
        matches!(&results[1], Err(PortalError::Conflict { code, .. }) if code == "idempotency_conflict"),
        "{:?}",
        results[1]
    );
    assert!(results[2].as_ref().unwrap().created, "{:?}", results[2]);
    assert!(results[3].as_ref().unwrap().replayed);
    assert!(
        matches!(&results[4], Err(PortalError::Validation { status: 422, code, .. }) if code == "invalid_amount"),
        "a rule the schema cannot state refuses its item only: {:?}",
        results[4]
    );
    assert_eq!(admin.summary().unwrap().fees, 4);
    assert_eq!(
        portal.fee(FeeId(2)).unwrap().amount,
        Money::from_cents(1_000)
    );

    // A fee that breaks the schema makes the server refuse the whole
    // batch; the client then sends each fee alone: only that one is refused.
    let mut invalid = push(6, 6, 1_000);
    invalid.description = "d".repeat(201);
    let fine = push(5, 6, 1_000);
    let (invalid_key, fine_key) = (first_intent_key(&invalid), first_intent_key(&fine));
    let requests = sim.stats().requests;
    let results = portal.upsert_fees(&[(&fine, &fine_key), (&invalid, &invalid_key)]);
    assert!(results[0].as_ref().unwrap().created, "{:?}", results[0]);
    assert!(
        matches!(
            &results[1],
            Err(PortalError::Validation { status: 422, .. })
        ),
        "{:?}",
        results[1]
    );
    assert_eq!(
        sim.stats().requests - requests,
        3,
        "the batch, then each fee alone"
    );
    assert_eq!(
        admin.summary().unwrap().fees,
        5,
        "the fine fee, not the invalid one"
    );
}

/// A batch whose answer is lost is sent again whole: what was applied is
/// replayed, every fee exists once.
#[test]
fn a_lost_batch_answer_is_retried_and_replayed() {
    let (sim, admin) = start(3);
    admin
        .set_faults(&FaultConfig {
            drop_rate: 0.5,
            ..FaultConfig::default()
        })
        .unwrap();
    let portal = client(&sim.base_url(), TEST_KEY, 12, 100);
    let fees: Vec<FeePush> = (1..=120)
        .map(|id| push(id, 5 + id % 7, 1_000 + id))
        .collect();
    let keys: Vec<String> = fees.iter().map(first_intent_key).collect();
    let items = items_of(&fees, &keys);
    for chunk in items.chunks(40) {
        for result in portal.upsert_fees(chunk) {
            result.unwrap();
        }
    }
    assert!(sim.stats().faults.dropped > 0, "answers were lost");
    admin.set_faults(&FaultConfig::default()).unwrap();
    assert_eq!(admin.summary().unwrap().fees, 120);
    for fee in &fees {
        assert_eq!(portal.fee(fee.genesis_fee_id).unwrap().amount, fee.amount);
    }
}

/// A server without the batch route (404) gets the same fees one by one,
/// and the client does not ask for the route again.
#[test]
fn a_server_without_batch_writes_gets_fees_one_by_one() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = vec![0u8; 65536];
            let read = stream.read(&mut buffer).unwrap_or(0);
            let text = String::from_utf8_lossy(&buffer[..read]).to_string();
            let line = text.lines().next().unwrap_or("").to_string();
            seen.lock().unwrap().push(line.clone());
            let (status, body) = if line.starts_with("POST /v1/fee-upserts") {
                (
                    "404 Not Found",
                    r#"{"code":"not_found","message":"no such resource"}"#.to_string(),
                )
            } else {
                let id: i64 = line
                    .split('/')
                    .nth(3)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|id| id.parse().ok())
                    .unwrap_or(0);
                (
                    "201 Created",
                    format!(
                        r#"{{"genesis_fee_id":{id},"vendor_fee_id":"CPF{id}","created":true,"amount":"10.00","balance":"10.00","status":"open","revision":1}}"#
                    ),
                )
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let portal = client(&format!("http://{address}"), TEST_KEY, 0, 100);
    let fees = [push(1, 5, 1_000), push(2, 5, 1_000)];
    let keys: Vec<String> = fees.iter().map(first_intent_key).collect();
    let items = items_of(&fees, &keys);
    let results = portal.upsert_fees(&items);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(portal.upsert_batch_max(), 1, "no batch asked for again");
    assert!(portal.upsert_fees(&items).iter().all(Result::is_ok));
    let lines = requests.lock().unwrap().clone();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("POST /v1/fee-upserts"))
            .count(),
        1,
        "{lines:?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("PUT /v1/fees/"))
            .count(),
        4,
        "{lines:?}"
    );
}

#[test]
fn amount_is_read_only_after_a_payment_409() {
    let (sim, admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    let fee = push(7, 5, 2_500);
    portal.upsert_fee(&fee, &first_intent_key(&fee)).unwrap();
    let payment = admin.pay(FeeId(7), Some(Money::from_cents(1_000))).unwrap();
    assert_eq!(payment.genesis_fee_id, Some(FeeId(7)));
    let edited = push(7, 5, 2_000);
    let error = portal
        .upsert_fee(&edited, &first_intent_key(&edited))
        .unwrap_err();
    assert!(
        matches!(&error, PortalError::Conflict { code, .. } if code == "amount_locked"),
        "{error:?}"
    );
    let fee = portal.fee(FeeId(7)).unwrap();
    assert_eq!(
        (fee.paid, fee.balance),
        (Money::from_cents(1_000), Money::from_cents(1_500))
    );
}

#[test]
fn unknown_fee_is_not_found_404() {
    let (sim, _admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    let error = portal.fee(FeeId(999)).unwrap_err();
    assert!(matches!(error, PortalError::NotFound { .. }), "{error:?}");
    assert_no_key(&error);
}

#[test]
fn wrong_key_is_unauthorized_401_and_never_shown() {
    let (sim, _admin) = start(1);
    let wrong = "sk_test_WRONG_000000";
    let portal = client(&sim.base_url(), wrong, 3, 100);
    let error = portal.test_pull().unwrap_err();
    assert!(
        matches!(error, PortalError::Unauthorized { .. }),
        "{error:?}"
    );
    assert!(!format!("{error} {error:?}").contains(wrong));
    assert_eq!(portal.retry_stats().retries(), 0, "401 is not retried");
}

#[test]
fn invalid_fee_is_a_validation_error_422() {
    let (sim, _admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 3, 100);
    let mut fee = push(3, 5, 2_500);
    fee.description = String::new();
    let error = portal
        .upsert_fee(&fee, &first_intent_key(&fee))
        .unwrap_err();
    assert!(
        matches!(error, PortalError::Validation { status: 422, .. }),
        "{error:?}"
    );
    assert_no_key(&error);
    let bad_key = portal.upsert_fee(&push(3, 5, 1), "short").unwrap_err();
    assert!(
        matches!(bad_key, PortalError::Validation { status: 400, .. }),
        "{bad_key:?}"
    );
}

#[test]
fn rate_limit_429_carries_retry_after_and_is_retried() {
    let (sim, admin) = start(1);
    let burst = FaultConfig {
        rate_limit_burst_rate: 1.0,
        rate_limit_burst_len: 1_000,
        retry_after_secs: 7,
        ..FaultConfig::default()
    };
    admin.set_faults(&burst).unwrap();
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    let error = portal.test_pull().unwrap_err();
    assert!(
        matches!(error, PortalError::RateLimited { retry_after: Some(wait), .. } if wait == Duration::from_secs(7)),
        "{error:?}"
    );
    assert_no_key(&error);

    let short = FaultConfig {
        rate_limit_burst_rate: 0.3,
        rate_limit_burst_len: 2,
        retry_after_secs: 0,
        ..FaultConfig::default()
    };
    admin.set_faults(&short).unwrap();
    let before = sim.stats().faults.rate_limited;
    let patient = client(&sim.base_url(), TEST_KEY, 10, 100);
    for _ in 0..10 {
        patient.test_pull().unwrap();
    }
    let refused = sim.stats().faults.rate_limited - before;
    assert!(refused > 0);
    assert_eq!(patient.retry_stats().rate_limited, refused);
}

#[test]
fn server_errors_5xx_are_retried_then_reported() {
    let (sim, admin) = start(1);
    let always = FaultConfig {
        error_5xx_rate: 1.0,
        ..FaultConfig::default()
    };
    admin.set_faults(&always).unwrap();
    let portal = client(&sim.base_url(), TEST_KEY, 2, 100);
    let error = portal.test_pull().unwrap_err();
    assert!(
        matches!(error, PortalError::Unavailable { .. }),
        "{error:?}"
    );
    assert_no_key(&error);
    assert_eq!(portal.retry_stats().server_error, 2);
    assert_eq!(sim.stats().faults.errors_5xx, 3);

    admin
        .set_faults(&FaultConfig {
            error_5xx_rate: 0.5,
            ..FaultConfig::default()
        })
        .unwrap();
    let patient = client(&sim.base_url(), TEST_KEY, 10, 100);
    for _ in 0..10 {
        patient.test_pull().unwrap();
    }
    assert!(patient.retry_stats().server_error > 0);
}

#[test]
fn a_dropped_answer_is_retried_and_replayed_from_the_idempotency_store() {
    let (sim, admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    admin
        .set_faults(&FaultConfig {
            drop_rate: 1.0,
            ..FaultConfig::default()
        })
        .unwrap();
    let fee = push(9, 5, 4_200);
    let key = first_intent_key(&fee);
    let error = portal.upsert_fee(&fee, &key).unwrap_err();
    assert!(
        matches!(error, PortalError::Unavailable { .. }),
        "{error:?}"
    );
    assert_no_key(&error);
    assert_eq!(sim.stats().faults.dropped, 1);

    admin.set_faults(&FaultConfig::default()).unwrap();
    let retried = portal.upsert_fee(&fee, &key).unwrap();
    assert!(
        retried.replayed && retried.created,
        "the lost answer is replayed: {retried:?}"
    );
    assert_eq!(admin.summary().unwrap().fees, 1);

    admin
        .set_faults(&FaultConfig {
            drop_rate: 0.5,
            ..FaultConfig::default()
        })
        .unwrap();
    let patient = client(&sim.base_url(), TEST_KEY, 10, 100);
    for _ in 0..10 {
        patient.test_pull().unwrap();
    }
    assert!(patient.retry_stats().connection > 0);
}

#[test]
fn a_slow_answer_times_out_and_is_retried() {
    let (sim, admin) = start(1);
    let slow = FaultConfig {
        latency_spike_rate: 1.0,
        latency_spike_ms: 800,
        ..FaultConfig::default()
    };
    admin.set_faults(&slow).unwrap();
    let mut config = HttpPortalConfig::new(sim.base_url(), Secret::new(TEST_KEY));
    config.request_timeout = Duration::from_millis(200);
    config.retry = fast_retry(1);
    let portal = HttpPortal::new(config).unwrap();
    let error = portal.test_pull().unwrap_err();
    assert!(matches!(error, PortalError::Timeout { .. }), "{error:?}");
    assert_no_key(&error);
    assert_eq!(portal.retry_stats().timeout, 1);
}

/// Serves one canned HTTP answer per connection, for answers the simulator
/// never gives (a malformed amount).
fn canned_server(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 8192];
            let _ = stream.read(&mut buffer);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    format!("http://{address}")
}

/// One transaction with a malformed amount does not fail its page: it is
/// set aside, named, with the reason, and the page's cursor still advances.
#[test]
fn a_malformed_amount_is_rejected_naming_the_record() {
    let body = r#"{"items":[{"id":"TXN77","sequence":1,"genesis_fee_id":5,"vendor_fee_id":"CPF5","student_id":3,"kind":"payment","amount":"12.345","method":"card","occurred_at":"2024-09-01T08:00:00","reverses":null}],"next_after":1,"has_more":false}"#;
    let portal = client(&canned_server(body), TEST_KEY, 0, 100);
    let page = portal.transactions_page(TxnScope::All, 0).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next_after, 1);
    let [rejected] = page.rejected.as_slice() else {
        panic!("one rejected record: {:?}", page.rejected);
    };
    assert_eq!(rejected.record, "transaction TXN77");
    assert_eq!(rejected.id.as_deref(), Some("TXN77"));
    assert!(rejected.reason.contains("12.345"), "{}", rejected.reason);
    assert!(!rejected.reason.contains(TEST_KEY));
}

#[test]
fn every_listing_pages_completely_with_filters() {
    let (sim, admin) = start(3);
    generate(&admin, 2_345, 3_000, 50);
    admin.duplicate(FeeId(17)).unwrap();
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);

    let fees = all_fees(&portal, None).unwrap();
    let ids: BTreeSet<i64> = fees.iter().map(|fee| fee.genesis_fee_id.0).collect();
    assert_eq!((fees.len(), ids.len()), (2_345, 2_345));
    assert!(fees.iter().all(|fee| fee.balance
        == fee.amount - fee.genesis_credit - fee.paid - fee.waived + fee.refunded + fee.reversed));
    assert!(fees.iter().any(|fee| fee.status == VendorFeeStatus::Paid));
    assert!(fees.iter().any(|fee| fee.reversed.is_positive()));

    let unmanaged = all_unmanaged_fees(&portal).unwrap();
    assert_eq!(unmanaged.len(), 51);
    let summary = admin.summary().unwrap();
    assert_eq!(all_balances(&portal).unwrap().len() as u64, summary.patrons);

    let batch = transactions_after(&portal, TxnScope::All, 0).unwrap();
    let sequences: Vec<i64> = batch.items.iter().map(|txn| txn.sequence).collect();
    assert_eq!(sequences, (1..=3_000).collect::<Vec<i64>>());
    assert_eq!(batch.next_after, 3_000);
    let later = transactions_after(&portal, TxnScope::All, 2_990).unwrap();
    assert_eq!(later.items.len(), 10);

    let student = fees[0].student_id;
    let of_student = all_fees(&portal, Some(student)).unwrap();
    let expected = fees.iter().filter(|fee| fee.student_id == student).count();
    assert_eq!(of_student.len(), expected);
    let student_txns = transactions_after(&portal, TxnScope::Student(student), 0).unwrap();
    let expected_txns: Vec<i64> = batch
        .items
        .iter()
        .filter(|txn| txn.student_id == Some(student))
        .map(|txn| txn.sequence)
        .collect();
    let got: Vec<i64> = student_txns.items.iter().map(|txn| txn.sequence).collect();
    assert_eq!(got, expected_txns);
    let guardian = GuardianId(student.0 * 10);
    let guardian_txns = transactions_after(&portal, TxnScope::Guardian(guardian), 0).unwrap();
    assert_eq!(guardian_txns.items, student_txns.items);

    // By fee ids, more than one call's worth: every fee asked for, once.
    let wanted: Vec<FeeId> = fees
        .iter()
        .step_by(2)
        .map(|fee| fee.genesis_fee_id)
        .collect();
    assert!(wanted.len() > FEE_IDS_PER_REQUEST_MAX);
    let by_id = fees_by_ids(&portal, &wanted).unwrap();
    let got: Vec<FeeId> = by_id.iter().map(|fee| fee.genesis_fee_id).collect();
    assert_eq!(got, wanted);
    let wanted_set: BTreeSet<FeeId> = wanted.iter().copied().collect();
    let of_fees = transactions_of_fees(&portal, &wanted).unwrap();
    let expected_txns: Vec<i64> = batch
        .items
        .iter()
        .filter(|txn| {
            txn.genesis_fee_id
                .is_some_and(|id| wanted_set.contains(&id))
        })
        .map(|txn| txn.sequence)
        .collect();
    let got: Vec<i64> = of_fees.items.iter().map(|txn| txn.sequence).collect();
    assert_eq!(got, expected_txns);

    // Changed since a time: the simulator stamps fees with its clock.
    let latest = fees.iter().map(|fee| fee.updated_at).max().unwrap();
    let after_all = latest + chrono::Duration::seconds(1);
    assert!(fees_where(&portal, FeeFilter::UpdatedSince(after_all))
        .unwrap()
        .is_empty());
    let at_latest = fees_where(&portal, FeeFilter::UpdatedSince(latest)).unwrap();
    let expected = fees.iter().filter(|fee| fee.updated_at >= latest).count();
    assert_eq!(at_latest.len(), expected);
    assert!(!at_latest.is_empty());
}

/// Malformed filters are refused with 422 naming the parameter, never
/// answered as if unfiltered.
#[test]
fn malformed_listing_filters_are_refused() {
    let (sim, _admin) = start(4);
    let http = reqwest::blocking::Client::new();
    let ask = |query: &str| {
        let answer = http
            .get(format!("{}/v1/fees?{query}", sim.base_url()))
            .bearer_auth(TEST_KEY)
            .send()
            .unwrap();
        (answer.status().as_u16(), answer.text().unwrap())
    };
    for query in [
        "genesis_fee_ids=",
        "genesis_fee_ids=1,,2",
        "genesis_fee_ids=0",
        "genesis_fee_ids=1,x",
        "genesis_fee_ids=1234567890123",
        "updated_since=2024-09-01",
        "updated_since=2024-09-01T08:00:00",
        "updated_since=2024-09-01T08:00:00.Z",
        "updated_since=2024-13-01T08:00:00Z",
    ] {
        let (status, body) = ask(query);
        assert_eq!(status, 422, "{query}: {body}");
        let parameter = query.split('=').next().unwrap();
        assert!(body.contains(parameter), "{query}: {body}");
    }
    let too_many: Vec<String> = (1..=FEE_IDS_PER_REQUEST_MAX + 1)
        .map(|id| id.to_string())
        .collect();
    let (status, _) = ask(&format!("genesis_fee_ids={}", too_many.join(",")));
    assert_eq!(status, 422);
    let (status, _) = ask("genesis_fee_ids=3,1,3&updated_since=2024-09-01T08:00:00.5%2B02:00");
    assert_eq!(status, 200);
}

#[test]
fn transaction_paging_is_exactly_once_under_duplicates_and_reordering() {
    let (sim, admin) = start(5);
    generate(&admin, 500, 3_000, 0);
    let messy = FaultConfig {
        duplicate_rate: 0.6,
        reorder_rate: 0.6,
        ..FaultConfig::default()
    };
    admin.set_faults(&messy).unwrap();
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    let batch = transactions_after(&portal, TxnScope::All, 0).unwrap();
    let sequences: Vec<i64> = batch.items.iter().map(|txn| txn.sequence).collect();
    assert_eq!(sequences, (1..=3_000).collect::<Vec<i64>>());
    assert!(batch.duplicates_dropped > 0);
    let faults = sim.stats().faults;
    assert!(
        faults.duplicated_pages > 0 && faults.reordered_pages > 0,
        "{faults:?}"
    );
}

#[test]
fn full_read_under_faults_returns_every_record_exactly_once() {
    let fee_count = env_number("CPSYNC_CONTRACT_FEES", 5_000);
    let txn_count = env_number("CPSYNC_CONTRACT_TXNS", 4_000);
    let page_size = env_number("CPSYNC_CONTRACT_PAGE", 100);
    let (sim, admin) = start(42);
    let started = Instant::now();
    generate(&admin, fee_count, txn_count, 0);
    eprintln!(
        "generated {fee_count} fees and {txn_count} transactions in {:?}",
        started.elapsed()
    );
    let hostile = FaultConfig {
        error_5xx_rate: 0.10,
        rate_limit_burst_rate: 0.02,
        rate_limit_burst_len: 3,
        retry_after_secs: 1,
        latency_spike_rate: 0.02,
        latency_spike_ms: 1_000,
        duplicate_rate: 0.2,
        reorder_rate: 0.2,
        ..FaultConfig::default()
    };
    admin.set_faults(&hostile).unwrap();
    let mut config = HttpPortalConfig::new(sim.base_url(), Secret::new(TEST_KEY));
    config.page_size = page_size;
    let portal = HttpPortal::new(config).unwrap();

    let started = Instant::now();
    let fees = all_fees(&portal, None).unwrap();
    let batch = transactions_after(&portal, TxnScope::All, 0).unwrap();
    let elapsed = started.elapsed();

    let ids: BTreeSet<i64> = fees.iter().map(|fee| fee.genesis_fee_id.0).collect();
    assert_eq!(ids, (1..=i64::from(fee_count)).collect::<BTreeSet<i64>>());
    assert_eq!(fees.len(), ids.len());
    let sequences: Vec<i64> = batch.items.iter().map(|txn| txn.sequence).collect();
    assert_eq!(sequences, (1..=i64::from(txn_count)).collect::<Vec<i64>>());
    let retries = portal.retry_stats();
    let faults = sim.stats().faults;
    eprintln!(
        "full read of {fee_count} fees + {txn_count} transactions (page {page_size}) in {elapsed:?}: \
         {} requests, {} retries ({retries:?}); simulator injected {faults:?}; {} duplicate deliveries dropped",
        retries.requests,
        retries.retries(),
        batch.duplicates_dropped
    );
    assert!(retries.retries() > 0, "the faults caused retries");
    assert_eq!(retries.rate_limited, faults.rate_limited);
    assert_eq!(retries.server_error, faults.errors_5xx);

    admin.set_faults(&FaultConfig::default()).unwrap();
    let started = Instant::now();
    let clean_fees = all_fees(&portal, None).unwrap();
    let clean_txns = transactions_after(&portal, TxnScope::All, 0).unwrap();
    assert_eq!(
        (clean_fees.len(), clean_txns.items.len()),
        (fees.len(), batch.items.len())
    );
    eprintln!(
        "the same read without faults: {:?}; peak memory of test + simulator: {}",
        started.elapsed(),
        peak_memory()
    );
}

/// The process's peak resident memory, from /proc (Linux), for the report.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .map(|line| line.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let config = HttpPortalConfig::new("http://cp.example.com", Secret::new(TEST_KEY));
    let error = HttpPortal::new(config).unwrap_err();
    assert!(matches!(error, PortalError::Config { .. }));
    assert!(error.to_string().contains("loopback"));
    assert_no_key(&error);
}

#[test]
fn https_is_really_tls_and_fails_against_a_plain_server() {
    let plain = canned_server("{}").replace("http://", "https://");
    let portal = client(&plain, TEST_KEY, 0, 100);
    let error = portal.test_pull().unwrap_err();
    assert!(
        matches!(error, PortalError::Unavailable { .. }),
        "{error:?}"
    );
    assert_no_key(&error);
}

#[test]
fn districts_are_isolated_by_api_key() {
    let (sim, admin) = start(1);
    let north_key = "sk_test_NORTH_81c2d4e6";
    admin
        .add_district("north", &Secret::new(north_key))
        .unwrap();
    let default = client(&sim.base_url(), TEST_KEY, 0, 100);
    let north = client(&sim.base_url(), north_key, 0, 100);
    let fee = push(1, 5, 2_500);
    default.upsert_fee(&fee, &first_intent_key(&fee)).unwrap();
    assert_eq!(north.test_pull().unwrap().district, "north");
    assert!(all_fees(&north, None).unwrap().is_empty());
    assert_eq!(all_fees(&default, None).unwrap().len(), 1);
    assert_eq!(admin.for_district("north").summary().unwrap().fees, 0);
}

#[test]
fn parent_side_actions_are_reflected_in_every_listing() {
    let (sim, admin) = start(1);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    for (id, cents) in [(1, 10_000), (2, 5_000), (3, 2_000)] {
        let fee = push(id, 5, cents);
        portal.upsert_fee(&fee, &first_intent_key(&fee)).unwrap();
    }
    let cents = |c| Some(Money::from_cents(c));
    let partial = admin.pay(FeeId(1), cents(4_000)).unwrap();
    let rest = admin.pay(FeeId(1), None).unwrap();
    assert_eq!(rest.amount, Money::from_cents(6_000));
    let over = admin.pay(FeeId(2), cents(6_000)).unwrap();
    admin.waive(FeeId(3), None).unwrap();
    let refund = admin.refund(&over.id, cents(1_000)).unwrap();
    assert_eq!(refund.reverses.as_ref(), Some(&over.id));
    let reversal = admin.reverse(&partial.id, 6).unwrap();
    // Six days after a payment made now would be in the future: a vendor
    // never dates a record after recording it.
    assert!(reversal.occurred_at <= partial.occurred_at + chrono::Duration::days(6));
    assert!(reversal.occurred_at >= partial.occurred_at);
    let duplicate = admin.duplicate(FeeId(2)).unwrap();
    assert_eq!(
        (duplicate.student_id, duplicate.amount),
        (Some(StudentId(5)), Money::from_cents(5_000))
    );

    let fees = all_fees(&portal, Some(StudentId(5))).unwrap();
    let by_id = |id: i64| {
        fees.iter()
            .find(|fee| fee.genesis_fee_id == FeeId(id))
            .unwrap()
    };
    assert_eq!(
        (by_id(1).reversed, by_id(1).balance, by_id(1).status),
        (
            Money::from_cents(4_000),
            Money::from_cents(4_000),
            VendorFeeStatus::Open
        )
    );
    assert_eq!(
        (by_id(2).refunded, by_id(2).balance, by_id(2).status),
        (Money::from_cents(1_000), Money::ZERO, VendorFeeStatus::Paid)
    );
    assert_eq!(
        (by_id(3).waived, by_id(3).status),
        (Money::from_cents(2_000), VendorFeeStatus::Waived)
    );

    let kinds: Vec<_> = transactions_after(&portal, TxnScope::Guardian(GuardianId(50)), 0)
        .unwrap()
        .items
        .iter()
        .map(|txn| txn.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["payment", "payment", "payment", "waiver", "refund", "reversal"]
    );
    let unmanaged = all_unmanaged_fees(&portal).unwrap();
    assert_eq!(unmanaged.len(), 1);
    let balance = all_balances(&portal).unwrap().pop().unwrap();
    assert_eq!(balance.patron_id, "S5");
    assert_eq!(balance.integration_balance, Money::from_cents(4_000));
    assert_eq!(balance.other_balance, Money::from_cents(5_000));
    assert_eq!(balance.balance, Money::from_cents(9_000));
}

#[test]
fn state_file_survives_a_restart_with_its_idempotency_store() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("sim-state.json");
    let mut config = SimConfig::new(Secret::new(TEST_KEY));
    config.state_file = Some(state_file.clone());
    let fee = push(4, 5, 1_234);
    let key = first_intent_key(&fee);
    let sim = Simulator::start(config.clone()).unwrap();
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    portal.upsert_fee(&fee, &key).unwrap();
    sim.admin()
        .unwrap()
        .pay(FeeId(4), Some(Money::from_cents(234)))
        .unwrap();
    sim.shutdown().unwrap();
    let saved = std::fs::read_to_string(&state_file).unwrap();
    assert!(!saved.contains(TEST_KEY), "keys are never persisted");

    let sim = Simulator::start(config).unwrap();
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    assert_eq!(
        portal.fee(FeeId(4)).unwrap().balance,
        Money::from_cents(1_000)
    );
    assert!(portal.upsert_fee(&fee, &key).unwrap().replayed);
    let batch = transactions_after(&portal, TxnScope::All, 0).unwrap();
    assert_eq!(batch.items.len(), 1);
}

/// The client against `prism mock api/community-pass.openapi.yaml`: prism
/// answers 422 to any request that breaks the contract, so no call may end
/// in a validation error. Run by `scripts/contract-tests`.
#[test]
#[ignore = "needs prism; run by scripts/contract-tests"]
fn prism_accepts_every_client_request() {
    let url = std::env::var("CPSYNC_PRISM_URL").expect("CPSYNC_PRISM_URL is set");
    let portal = client(&url, TEST_KEY, 0, 100);
    let not_a_contract_breach = |what: &str, error: Option<PortalError>| {
        if let Some(error) = error {
            assert!(
                !matches!(
                    error,
                    PortalError::Validation { .. } | PortalError::Unauthorized { .. }
                ),
                "{what}: prism rejected the request: {error}"
            );
            assert_no_key(&error);
            eprintln!("{what}: accepted by prism (answer not usable: {error})");
        } else {
            eprintln!("{what}: accepted by prism");
        }
    };
    not_a_contract_breach("test pull", portal.test_pull().err());
    not_a_contract_breach("test push", portal.test_push().err());
    let fee = push(1001, 501, 4_250);
    not_a_contract_breach(
        "fee upsert",
        portal.upsert_fee(&fee, &first_intent_key(&fee)).err(),
    );
    let second = push(1002, 501, 1_000);
    let (first_key, second_key) = (first_intent_key(&fee), first_intent_key(&second));
    for (what, result) in ["batch upsert, first fee", "batch upsert, second fee"]
        .into_iter()
        .zip(portal.upsert_fees(&[(&fee, &first_key), (&second, &second_key)]))
    {
        not_a_contract_breach(what, result.err());
    }
    not_a_contract_breach("fee", portal.fee(FeeId(1001)).err());
    not_a_contract_breach("fees", portal.fees_page(FeeFilter::All, None).err());
    not_a_contract_breach(
        "fees of a student",
        portal
            .fees_page(FeeFilter::Student(StudentId(501)), Some("1000"))
            .err(),
    );
    not_a_contract_breach(
        "fees by id",
        portal
            .fees_page(FeeFilter::Ids(&[FeeId(1001), FeeId(1002)]), None)
            .err(),
    );
    let since = chrono::NaiveDate::from_ymd_opt(2024, 9, 2)
        .and_then(|day| day.and_hms_milli_opt(10, 15, 0, 250))
        .unwrap();
    not_a_contract_breach(
        "fees changed since",
        portal.fees_page(FeeFilter::UpdatedSince(since), None).err(),
    );
    not_a_contract_breach(
        "transactions of fees",
        portal
            .transactions_page(TxnScope::Fees(&[FeeId(1001), FeeId(1002)]), 0)
            .err(),
    );
    not_a_contract_breach("unmanaged fees", portal.unmanaged_fees_page(None).err());
    not_a_contract_breach(
        "transactions",
        portal.transactions_page(TxnScope::All, 0).err(),
    );
    not_a_contract_breach(
        "transactions of a student",
        portal
            .transactions_page(TxnScope::Student(StudentId(501)), 10)
            .err(),
    );
    not_a_contract_breach(
        "transactions of a guardian",
        portal
            .transactions_page(TxnScope::Guardian(GuardianId(5010)), 0)
            .err(),
    );
    not_a_contract_breach("balances", portal.balances_page(Some("533130")).err());
}

/// The key of a fee's first intended write.
fn first_intent_key(push: &cpsync::domain::FeePush) -> String {
    intent_key(push.genesis_fee_id, 1, &push_digest(push))
}

/// The simulator's clock moves forward on request (tests cross a second of
/// its whole-second clock without sleeping), never back, and by at most a
/// year at a time.
#[test]
fn the_simulators_clock_moves_forward_on_request() {
    let (sim, admin) = start(3);
    let portal = client(&sim.base_url(), TEST_KEY, 0, 100);
    let before = portal.test_pull().unwrap().server_time;
    admin.advance_clock(3_600).unwrap();
    let after = portal.test_pull().unwrap().server_time;
    let moved = (after - before).num_seconds();
    assert!((3_600..=3_602).contains(&moved), "moved {moved} s");
    for refused in [0, -5, 400 * 24 * 3600] {
        let error = admin.advance_clock(refused).unwrap_err().to_string();
        assert!(
            error.contains("advance_secs must be 1 to"),
            "{refused}: {error}"
        );
    }
}
