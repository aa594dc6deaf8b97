//! A tiny hostile Community Pass: a std `TcpListener` thread that answers
//! every request with crafted bytes (malformed JSON, wrong types, bad
//! amounts, oversized or truncated bodies), and the corpus of transaction
//! pages the engine must survive; and raw peers that trickle, stall or
//! never answer (`start_raw`, `trickle`), for the deadline tests. Shared
//! by `tests/bad_input.rs`, `tests/deadlines.rs` and the chaos driver
//! (`examples/chaos`), which includes this file by path.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The most bytes of a request head the server reads.
const REQUEST_HEAD_BYTES_MAX: usize = 64 * 1024;
/// How long the server waits for a request before it gives up on it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server sends back for a request path (with its query).
pub type Answer = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A running hostile server; dropping it stops the accept loop.
pub struct HostileServer {
    pub base_url: String,
    pub requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl HostileServer {
    /// Serves `answer` on a free loopback port, one answer per connection.
    pub fn start(answer: Box<Answer>) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (stopping, counting) = (Arc::clone(&stop), Arc::clone(&requests));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        counting.fetch_add(1, Ordering::SeqCst);
                        let _ = serve(stream, &*answer);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HostileServer {
            base_url,
            requests,
            stop,
        }
    }
}

/// What a raw hostile server does with one accepted connection (after the
/// request head is read): trickle, stall, answer oddly.
pub type Behaviour = dyn Fn(TcpStream) + Send + Sync;

impl HostileServer {
    /// Serves every connection on its own thread with `behaviour`, which
    /// gets the stream after the request head has been read: for peers
    /// that trickle, stall or never answer.
    pub fn start_raw(behaviour: Box<Behaviour>) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (stopping, counting) = (Arc::clone(&stop), Arc::clone(&requests));
        let behaviour: Arc<Behaviour> = Arc::from(behaviour);
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        counting.fetch_add(1, Ordering::SeqCst);
                        let behaviour = Arc::clone(&behaviour);
                        std::thread::spawn(move || {
                            if read_head(&mut stream).is_ok() {
                                behaviour(stream);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HostileServer {
            base_url,
            requests,
            stop,
        }
    }
}

/// Sends `bytes` one at a time, `pause` apart, until done or the peer goes.
pub fn trickle(stream: &mut TcpStream, bytes: &[u8], pause: Duration) {
    for byte in bytes {
        if stream.write_all(&[*byte]).is_err() || stream.flush().is_err() {
            return;
        }
        std::thread::sleep(pause);
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(mut stream: TcpStream, answer: &Answer) -> std::io::Result<()> {
    let target = read_head(&mut stream)?;
    stream.write_all(&answer(&target))?;
    stream.flush()
}

/// Reads a request head; returns its target (path and query).
fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < REQUEST_HEAD_BYTES_MAX {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.split_whitespace().nth(1).unwrap_or("/").to_string())
}

/// A complete HTTP/1.1 answer with a JSON body.
pub fn http(status: u16, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// An answer that promises `promised` bytes and sends only the first ones.
pub fn truncated(body: &[u8], promised: usize) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {promised}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(&body[..body.len().min(promised / 2)]);
    bytes
}

/// A well-formed transaction item (the contract's JSON) on `fee_id`.
pub fn txn_json(id: &str, sequence: i64, fee_id: i64, amount: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "sequence": sequence,
        "genesis_fee_id": fee_id,
        "vendor_fee_id": format!("CPF{fee_id:010}"),
        "student_id": null,
        "kind": "payment",
        "amount": amount,
        "method": "card",
        "occurred_at": "2026-09-02T09:00:00",
        "reverses": null
    })
}

/// A transaction page holding these items, the last page of the cursor.
pub fn txn_page(items: Vec<serde_json::Value>) -> Vec<u8> {
    let next_after = items.len() as i64;
    serde_json::to_vec(&serde_json::json!({
        "items": items,
        "next_after": next_after,
        "has_more": false
    }))
    .expect("JSON")
}

/// How the engine must come out of one hostile answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The run fails with exit 1 and a message containing the text.
    Fails(&'static str),
    /// The good records are posted; the bad one is parked with a reason
    /// containing the text, and the run goes on.
    Parks(&'static str),
}

/// One entry of the bad input corpus for the transaction pull.
pub struct Case {
    pub name: &'static str,
    /// The bad item placed between two good ones (good ids `G1`, `G2`).
    pub bad_item: Option<serde_json::Value>,
    /// A whole answer instead of a page (for body-level faults).
    pub whole_answer: Option<Vec<u8>>,
    pub expect: Expect,
}

/// The corpus: each bad record or answer, and what must come of it.
/// `fee` is a fee that exists in Genesis; `unknown_fee` one that does not.
pub fn corpus(fee: i64, unknown_fee: i64) -> Vec<Case> {
    let bad = |name, item, expect| Case {
        name,
        bad_item: Some(item),
        whole_answer: None,
        expect,
    };
    let whole = |name, answer, expect| Case {
        name,
        bad_item: None,
        whole_answer: Some(answer),
        expect,
    };
    let mut wrong_type = txn_json("B1", 2, fee, "1.00");
    wrong_type["amount"] = serde_json::json!(12.5);
    let mut missing = txn_json("B1", 2, fee, "1.00");
    missing.as_object_mut().expect("object").remove("kind");
    let mut long_method = txn_json("B1", 2, fee, "1.00");
    long_method["method"] = serde_json::json!("x".repeat(100_000));
    let mut control = txn_json("B1", 2, fee, "1.00");
    control["method"] = serde_json::json!("card\u{1b}[31m\u{0}");
    let mut bad_kind = txn_json("B1", 2, fee, "1.00");
    bad_kind["kind"] = serde_json::json!("gift");
    let oversized: Vec<serde_json::Value> = (0..60_000)
        .map(|i| txn_json(&format!("O{i}"), i + 1, fee, "1.00"))
        .collect();
    let good = txn_page(vec![txn_json("G1", 1, fee, "1.00")]);
    vec![
        bad(
            "amount with three decimal places",
            txn_json("B1", 2, fee, "1.005"),
            Expect::Parks("B1"),
        ),
        bad(
            "amount as a JSON number (wrong type)",
            wrong_type,
            Expect::Parks("B1"),
        ),
        bad(
            "negative amount",
            txn_json("B1", 2, fee, "-5.00"),
            Expect::Parks("B1"),
        ),
        bad(
            "absurd amount",
            txn_json("B1", 2, fee, "99999999999999999.00"),
            Expect::Parks("B1"),
        ),
        bad("missing field", missing, Expect::Parks("B1")),
        bad("unknown kind", bad_kind, Expect::Parks("B1")),
        bad("oversized field", long_method, Expect::Parks("B1")),
        bad(
            "control characters in a field",
            control,
            Expect::Parks("B1"),
        ),
        bad(
            "unknown fee id",
            txn_json("B1", 2, unknown_fee, "1.00"),
            Expect::Parks("not found in Genesis"),
        ),
        whole(
            "malformed JSON",
            http(200, b"{\"items\": [ {\"id\": "),
            Expect::Fails("transaction cursor"),
        ),
        whole(
            "a page that is not an object",
            http(200, b"[1, 2, 3]"),
            Expect::Fails("transaction cursor"),
        ),
        whole(
            "truncated response",
            truncated(&good, 4_000),
            Expect::Fails("Community Pass"),
        ),
        whole(
            "oversized page",
            http(200, &txn_page(oversized)),
            Expect::Fails("larger than"),
        ),
        whole(
            "HTML error page",
            http(500, b"<html><body>Oops</body></html>"),
            Expect::Fails("unavailable"),
        ),
    ]
}

/// The answer of `case` to a transaction-cursor request (the two good
/// items `G1` and `G3` surround the bad one).
pub fn answer_for(case: &Case, fee: i64) -> Vec<u8> {
    if let Some(answer) = &case.whole_answer {
        return answer.clone();
    }
    let bad = case.bad_item.clone().expect("a bad item");
    http(
        200,
        &txn_page(vec![
            txn_json("G1", 1, fee, "1.00"),
            bad,
            txn_json("G3", 3, fee, "2.00"),
        ]),
    )
}
