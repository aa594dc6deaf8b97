//! One seeded scenario: a random small district, random vendor faults, the
//! engine killed at seeded points of send-fees, get-payments, nightly apply
//! and export, rounds of tasks while parents and office staff keep working,
//! then a finish with the faults off and the invariant checks.
//!
//! Everything the driver decides comes from the seed, and nothing from the
//! clock: a kill is "after operation n" (the engine SIGKILLs itself, see
//! `cpsync::failpoint`), `watch` gets SIGTERM once the outbox is drained
//! (or kills itself at its planned operation), the office and parent actions
//! are drawn from the seed, and the simulator draws each request's faults
//! from the request itself. A round of tasks runs one of two ways
//! (`Rounds`): serially, each task and each live action one after another
//! in a seeded order, so the scenario replays exactly and its trace is
//! byte-identical run after run; or concurrently, every task a process at
//! the same time with the live actions on a thread beside them (real lock
//! contention, real races), whose outcomes depend on the scheduler — its
//! trace records the same plan, but the order of ends and what follows may
//! differ from run to run.

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use diesel::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use cpsync::domain::VendorFeeStatus;
use cpsync::portal::all_fees;
use cpsync::scenario::{drive_parents, inject_genesis_drift, SentFee};
use cpsync::sim::model::{ActionOutcome, FeeRef, ParentAction};
use cpsync::sim::FaultConfig;

use crate::engine::{tail, Ended, Planned};
use crate::tally::ScenarioResult;
use crate::world::World;

/// Planned kills fall after operation 1 to this (a run that ends sooner is
/// not killed: as a late SIGKILL used to find it finished).
const KILL_OPERATIONS_MAX: u64 = 12;
/// `watch`'s planned kill, when it has one, falls after operation 1 to this.
const WATCH_OPERATIONS_MAX: u64 = 16;
/// Killed send-fees runs before the first complete one.
const SEND_KILLS_MAX: u32 = 3;
/// Rounds of tasks running at the same time.
const CONCURRENT_ROUNDS_MAX: u32 = 3;
/// Office and parent actions made while a round runs.
const LIVE_ACTIONS_MAX: usize = 6;
/// The first id of fees the office adds during a scenario.
const NEW_FEE_ID_FIRST: i64 = 9_000_001;
/// The most nightly writes `CPSYNC_CRASH_AFTER_WRITES` aborts after.
const CRASH_WRITE_MAX: u64 = 4;

/// How the tasks of a round run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rounds {
    /// One after another in a seeded order: the scenario replays exactly.
    Serial,
    /// All at once, live actions beside them: real contention, not exact.
    Concurrent,
}

/// Runs scenario `seed`; a harness error counts as a violation.
pub fn run(
    seed: u64,
    bin: &std::path::Path,
    work: &std::path::Path,
    pg_admin: Option<&str>,
    rounds: Rounds,
    keep: bool,
) -> ScenarioResult {
    let started = Instant::now();
    let mut result = ScenarioResult {
        backend: if pg_admin.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        ..ScenarioResult::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6368_616f_735f_7631);
    result.trace.push(format!(
        "scenario {seed}: {} database, {rounds:?} rounds",
        result.backend
    ));
    let dir = match World::build(seed, &mut rng, bin, work, pg_admin) {
        Ok(world) => {
            let dir = world.dir.clone();
            world.engine.trace.event(world.describe());
            if let Err(error) = Scenario::new(&world, rng, rounds, &mut result).play() {
                result
                    .violations
                    .push(format!("the scenario could not complete: {error:#}"));
            }
            result.child_runs = world.engine.runs();
            result.trace.extend(world.engine.trace.lines());
            Some(dir)
        }
        Err(error) => {
            result
                .violations
                .push(format!("the scenario could not start: {error:#}"));
            None
        }
    };
    result.trace.extend(result.figures());
    if let Some(dir) = &dir {
        if let Err(error) = crate::trace::write(&dir.join("trace.txt"), &result.trace) {
            result
                .violations
                .push(format!("the trace could not be written: {error:#}"));
        }
    }
    result.elapsed = started.elapsed();
    let clean = result.violations.is_empty() && result.secrets_found.is_empty();
    if let (Some(dir), true, false) = (dir, clean, keep) {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Random but bounded vendor faults for one scenario.
fn random_faults(rng: &mut ChaCha8Rng) -> FaultConfig {
    FaultConfig {
        latency_ms: rng.gen_range(0..=4),
        latency_spike_rate: rng.gen_range(0.0..0.03),
        // Longer than the client's request timeout (1 or 2 s): a timeout.
        latency_spike_ms: 2_300,
        error_5xx_rate: rng.gen_range(0.0..0.15),
        rate_limit_burst_rate: rng.gen_range(0.0..0.04),
        rate_limit_burst_len: rng.gen_range(1..=4),
        retry_after_secs: rng.gen_range(0..=1),
        drop_rate: rng.gen_range(0.0..0.08),
        duplicate_rate: rng.gen_range(0.0..0.6),
        reorder_rate: rng.gen_range(0.0..0.6),
        lost_write_rate: 0.0,
    }
}

struct Scenario<'a> {
    world: &'a World,
    rng: ChaCha8Rng,
    rounds: Rounds,
    result: &'a mut ScenarioResult,
    faults: FaultConfig,
    sent: Vec<SentFee>,
    next_fee_id: i64,
    watch_available: bool,
    /// The injected vendor records that must end held, never posted.
    expected: crate::vendor_records::Expected,
}

impl<'a> Scenario<'a> {
    fn new(
        world: &'a World,
        mut rng: ChaCha8Rng,
        rounds: Rounds,
        result: &'a mut ScenarioResult,
    ) -> Self {
        let faults = random_faults(&mut rng);
        Scenario {
            world,
            rng,
            rounds,
            result,
            faults,
            sent: Vec::new(),
            next_fee_id: NEW_FEE_ID_FIRST,
            watch_available: false,
            expected: Default::default(),
        }
    }

    fn play(mut self) -> anyhow::Result<()> {
        self.world.setup()?;
        self.watch_available = self.world.engine.run(&["watch", "--help"])?.code == Some(0);
        if !self.watch_available {
            // A stage the campaign claims to run must run: no silent skip.
            self.result
                .violations
                .push("`cpsync watch --help` failed, so watch could not be run".to_string());
        }
        self.set_faults(true)?;
        self.send_fees_under_kills()?;
        self.parents_and_drift()?;
        let rounds = self.rng.gen_range(1..=CONCURRENT_ROUNDS_MAX);
        for round in 1..=rounds {
            self.event(format!("round {round} of {rounds}"));
            self.concurrent_round()?;
        }
        self.set_faults(false)?;
        let stats = self.world.sim.stats();
        self.result.faults = stats.faults;
        self.result.vendor_requests = stats.requests;
        if let Some(fee) = self.sent.choose(&mut self.rng) {
            self.event(format!("vendor: corrupt fee {} (contained?)", fee.fee_id.0));
            crate::vendor_records::contained(self.world, fee.fee_id, self.result)?;
        }
        let final_run = self.finish()?;
        crate::hostile::check_handled(self.world, &final_run, self.result)?;
        let expectations = crate::checks::Expectations {
            held: &self.expected.held,
            sent_students: self
                .sent
                .iter()
                .map(|f| (f.fee_id.0, f.student_id.0))
                .collect(),
        };
        crate::checks::all(self.world, final_run, &expectations, self.result)?;
        self.lock_refuses_a_second_nightly()?;
        self.closed_pipes_end_quietly()?;
        self.stale_lock_rows_are_handled()?;
        if self.result.backend == "PostgreSQL" {
            let like = self
                .sent
                .first()
                .ok_or_else(|| anyhow::anyhow!("no fee was sent, so none to copy"))?
                .fee_id;
            crate::pg_restart::under_watch(self.world, like, self.result)?;
        }
        crate::secrets::scan(self.world, self.result)?;
        Ok(())
    }

    fn event(&self, text: impl AsRef<str>) {
        self.world.engine.trace.event(text);
    }

    /// The scenario's faults on, or every fault off.
    fn set_faults(&self, on: bool) -> anyhow::Result<()> {
        if on {
            self.event(format!(
                "faults on: {}",
                serde_json::to_string(&self.faults)?
            ));
            self.world.admin.set_faults(&self.faults)?;
        } else {
            self.event("faults off");
            self.world.admin.set_faults(&FaultConfig::default())?;
        }
        Ok(())
    }

    /// A kill after a seeded count of operations.
    fn kill_point(&mut self) -> Planned {
        Planned::KillAfterOperations(self.rng.gen_range(1..=KILL_OPERATIONS_MAX))
    }

    /// Looks at how a run under faults ended: crashes are violations,
    /// failures and lock refusals are counted.
    fn observe(&mut self, ended: &Ended, what: &'static str, abort_expected: bool) {
        let stats = self.world.sim.stats();
        self.event(format!(
            "vendor so far: {} requests, faults {:?}",
            stats.requests, stats.faults
        ));
        if let Some(crash) = ended.crashed(abort_expected) {
            self.result.violations.push(crash);
        }
        if ended.killed || (abort_expected && ended.signal == Some(6)) {
            *self.result.kills.entry(what).or_default() += 1;
        }
        match ended.code {
            Some(1) => self.result.failed_under_faults += 1,
            Some(4) => self.result.lock_refusals += 1,
            Some(0) | Some(3) | None => {}
            Some(other) => self.result.violations.push(format!(
                "{} exited {other}: {}",
                ended.label,
                tail(&ended.stderr)
            )),
        }
    }

    fn send_fees_under_kills(&mut self) -> anyhow::Result<()> {
        let kills = self.rng.gen_range(0..=SEND_KILLS_MAX);
        for _ in 0..kills {
            let planned = self.kill_point();
            let ended = self.world.engine.spawn(&["send-fees"], planned)?.wait()?;
            self.observe(&ended, "send-fees", false);
        }
        let ended = self.world.engine.run(&["send-fees"])?;
        self.observe(&ended, "send-fees", false);
        Ok(())
    }

    /// Parents pay, refund, waive and bounce checks; office staff edit,
    /// add fees and take office payments whose pushes are lost.
    fn parents_and_drift(&mut self) -> anyhow::Result<()> {
        self.set_faults(false)?;
        self.sent = all_fees(&self.world.portal, None)?
            .iter()
            .filter(|f| f.status == VendorFeeStatus::Open && f.balance == f.amount)
            .filter(|f| f.balance.is_positive())
            .map(|f| SentFee {
                fee_id: f.genesis_fee_id,
                student_id: f.student_id,
                amount: f.balance,
            })
            .collect();
        let start = NaiveDate::from_ymd_opt(2026, 9, 1)
            .and_then(|d| d.and_hms_opt(8, 0, 0))
            .expect("a valid date");
        self.event(format!(
            "sent and open: {} fees ({})",
            self.sent.len(),
            self.sent
                .iter()
                .map(|f| format!("{}:{}", f.fee_id.0, f.amount))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let parents = drive_parents(&self.world.admin, &self.sent, self.world.seed, start)?;
        self.event(format!("parents: {}", serde_json::to_string(&parents)?));
        let mut conn = self.world.connect()?;
        let count = self.rng.gen_range(1..=3).min(self.sent.len() / 3);
        if count > 0 {
            let drift = inject_genesis_drift(&mut conn, &self.sent, count, self.next_fee_id)?;
            self.event(format!("office drift: {}", serde_json::to_string(&drift)?));
            self.next_fee_id += count as i64;
        }
        // Fees the drift above left alone: its first `count` lend their
        // student to new fees, its last `2 * count` are edited.
        let untouched_end = self.sent.len().saturating_sub(2 * count);
        if untouched_end > count {
            // The last few untouched fees get vendor records that do not
            // belong; the office acts on the others.
            let fees = self.sent[count..untouched_end].to_vec();
            let split = fees.len() - crate::vendor_records::fees_wanted(fees.len());
            let students: Vec<_> = self.sent.iter().map(|f| f.student_id).collect();
            self.expected = crate::vendor_records::inject(
                self.world,
                &mut self.rng,
                &fees[split..],
                &students,
                self.result,
            )?;
            self.event(format!(
                "vendor: {} records that do not belong, to be held: {:?}",
                self.result.bad_vendor_records, self.expected.held
            ));
            crate::convergence::inject(self.world, &mut self.rng, &fees[..split], self.result)?;
            self.event(format!(
                "office: {} actions over fees' lives, {} fees made in Community Pass only",
                self.result.office_actions, self.result.unmanaged_injected
            ));
        }
        crate::hostile::genesis_rows(&mut conn, self.world, &mut self.rng, self.result)?;
        self.event(format!(
            "hostile: {} bad Genesis inputs planted",
            self.result.bad_inputs_tried
        ));
        self.set_faults(true)?;
        Ok(())
    }

    /// Plans one task of a round: maybe a crash point (nightly), maybe a
    /// kill after a seeded count of operations.
    fn plan_task(&mut self, args: &[&str], what: &'static str, kill_chance: f64) -> Task {
        let crash = what == "nightly" && self.rng.gen_bool(0.3);
        self.result.crash_points_planned += u64::from(crash);
        let planned = if crash {
            Planned::CrashAfterWrites(self.rng.gen_range(1..=CRASH_WRITE_MAX))
        } else if self.rng.gen_bool(kill_chance) {
            self.kill_point()
        } else {
            Planned::Nothing
        };
        Task {
            args: args.iter().map(|a| a.to_string()).collect(),
            what: if crash {
                "nightly (crash after write k)"
            } else {
                what
            },
            planned,
            crash,
            watch: false,
        }
    }

    fn random_ids(&mut self) -> anyhow::Result<(i64, i64)> {
        use cpsync::db::schema::student_guardians::dsl::*;
        let mut conn = self.world.connect()?;
        let mut pairs: Vec<(i64, i64)> = student_guardians
            .select((student_id, guardian_id))
            .load(&mut conn)?;
        pairs.sort_unstable();
        let (student, guardian) = *pairs
            .choose(&mut self.rng)
            .ok_or_else(|| anyhow::anyhow!("the district has no guardian links"))?;
        let other = pairs.choose(&mut self.rng).map_or(guardian, |p| p.1);
        Ok((student, other))
    }

    /// Nightly, pulls (cursor, one student, one guardian), send-fees,
    /// export and watch, some killed, while parents and office staff keep
    /// working: serially or at the same time (`Rounds`).
    fn concurrent_round(&mut self) -> anyhow::Result<()> {
        let (student, guardian) = self.random_ids()?;
        let (student, guardian) = (student.to_string(), guardian.to_string());
        let export_dir = self.world.dir.join("export").display().to_string();
        let nightly: &[&str] = if self.rng.gen_bool(0.5) {
            &["nightly", "--incremental"]
        } else {
            &["nightly"]
        };
        let mut tasks = vec![
            self.plan_task(nightly, "nightly", 0.4),
            self.plan_task(&["get-payments"], "get-payments", 0.4),
            self.plan_task(
                &["get-payments", "--student", &student],
                "get-payments --student",
                0.2,
            ),
            self.plan_task(
                &["get-payments", "--guardian", &guardian],
                "get-payments --guardian",
                0.2,
            ),
            self.plan_task(&["send-fees"], "send-fees", 0.3),
            self.plan_task(&["export", "--to", &export_dir], "export", 0.4),
        ];
        if self.rng.gen_bool(0.3) {
            tasks.push(self.plan_task(&["nightly"], "nightly", 0.0));
        }
        if self.watch_available {
            // Watch runs until the outbox is drained (then SIGTERM), or
            // kills itself at a seeded operation.
            let planned = if self.rng.gen_bool(0.5) {
                Planned::KillAfterOperations(self.rng.gen_range(1..=WATCH_OPERATIONS_MAX))
            } else {
                Planned::Nothing
            };
            tasks.push(Task {
                args: vec!["watch".to_string()],
                what: "watch",
                planned,
                crash: false,
                watch: true,
            });
        }
        let actions = self.live_actions();
        match self.rounds {
            Rounds::Serial => self.serial_round(tasks, actions),
            Rounds::Concurrent => self.real_round(tasks, actions),
        }
    }

    /// The round's tasks and live actions one after another, in a seeded
    /// order: what each finds depends only on the seed.
    fn serial_round(&mut self, tasks: Vec<Task>, actions: Vec<LiveAction>) -> anyhow::Result<()> {
        let mut steps: Vec<Step> = tasks
            .into_iter()
            .map(Step::Task)
            .chain(actions.into_iter().map(Step::Live))
            .collect();
        steps.shuffle(&mut self.rng);
        let mut conn = self.world.connect()?;
        for step in steps {
            match step {
                Step::Task(task) => {
                    let args: Vec<&str> = task.args.iter().map(String::as_str).collect();
                    let running = self.world.engine.spawn(&args, task.planned)?;
                    let ended = if task.watch {
                        running.wait_or_terminate(WATCH_READY, || outbox_drained(&mut conn))?
                    } else {
                        running.wait()?
                    };
                    self.observe(&ended, task.what, task.crash);
                }
                Step::Live(action) => {
                    let outcome = self.act(&mut conn, &action)?;
                    self.event(outcome);
                }
            }
        }
        Ok(())
    }

    /// Every task at once, the live actions on a thread beside them; watch
    /// gets SIGTERM once the others have ended and the outbox is drained.
    fn real_round(&mut self, tasks: Vec<Task>, actions: Vec<LiveAction>) -> anyhow::Result<()> {
        let mut started = Vec::new();
        for task in tasks {
            let args: Vec<&str> = task.args.iter().map(String::as_str).collect();
            let running = self.world.engine.spawn(&args, task.planned)?;
            started.push((running, task));
        }
        let others = started.iter().filter(|(_, task)| !task.watch).count();
        let ended_others = std::sync::atomic::AtomicUsize::new(0);
        let live_done = std::sync::atomic::AtomicBool::new(false);
        let spread_seed = self.rng.gen::<u64>();
        let this = &*self;
        let (ended, live) = std::thread::scope(|threads| {
            let live = threads.spawn(|| {
                let outcomes = this.live_beside(actions, spread_seed);
                live_done.store(true, std::sync::atomic::Ordering::SeqCst);
                outcomes
            });
            let waiting: Vec<_> = started
                .into_iter()
                .map(|(running, task)| {
                    let ended_others = &ended_others;
                    let live_done = &live_done;
                    threads.spawn(move || {
                        let ended = if task.watch {
                            let mut conn = this.world.connect()?;
                            running.wait_or_terminate(WATCH_READY, || {
                                ended_others.load(std::sync::atomic::Ordering::SeqCst) == others
                                    && live_done.load(std::sync::atomic::Ordering::SeqCst)
                                    && outbox_drained(&mut conn)
                            })
                        } else {
                            let ended = running.wait();
                            ended_others.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            ended
                        };
                        anyhow::Ok((ended?, task.what, task.crash))
                    })
                })
                .collect();
            let ended: Vec<_> = waiting
                .into_iter()
                .map(|w| w.join().expect("a waiting thread does not panic"))
                .collect();
            (ended, live.join().expect("the live thread does not panic"))
        });
        for outcome in live? {
            self.event(outcome);
        }
        for ended in ended {
            let (ended, what, crash) = ended?;
            self.observe(&ended, what, crash);
        }
        Ok(())
    }

    /// What parents and the office do during a round, drawn from the seed:
    /// small payments in Community Pass, amount edits and new fees in Genesis.
    fn live_actions(&mut self) -> Vec<LiveAction> {
        let count = self.rng.gen_range(0..=LIVE_ACTIONS_MAX);
        let mut actions = Vec::new();
        for _ in 0..count {
            let Some(fee) = self.sent.choose(&mut self.rng) else {
                break;
            };
            let fee = fee.fee_id.0;
            actions.push(match self.rng.gen_range(0..3) {
                0 => LiveAction::Payment {
                    fee,
                    cents: self.rng.gen_range(100..900),
                },
                1 => LiveAction::EditAmount {
                    fee,
                    cents: self.rng.gen_range(1..500),
                },
                _ => LiveAction::AddFee { like: fee },
            });
        }
        actions
    }

    /// Makes one live action; says what happened, for the trace.
    fn act(
        &self,
        conn: &mut cpsync::db::DbConnection,
        action: &LiveAction,
    ) -> anyhow::Result<String> {
        Ok(match *action {
            LiveAction::Payment { fee, cents } => {
                // A payment on a fee that may meanwhile be void or paid is refused: fine.
                let answer = self.world.admin.act(vec![ParentAction::Payment {
                    fee: FeeRef::Genesis(cpsync::domain::FeeId(fee)),
                    amount: Some(cpsync::money::Money::from_cents(cents)),
                    method: Some("card".to_string()),
                    occurred_at: None,
                }]);
                // The outcome's kind, not its ids or time: the simulator
                // numbers vendor fees in the order pushes arrive.
                let outcome = match answer {
                    Ok(results) => results
                        .iter()
                        .map(|r| match r {
                            ActionOutcome::Transaction(t) => {
                                format!("transaction {} of {}", t.id, t.amount)
                            }
                            ActionOutcome::UnmanagedFee(_) => "an unmanaged fee".to_string(),
                            ActionOutcome::FaultSet => "a fault set".to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    Err(_) => "refused".to_string(),
                };
                format!("parent: pays {cents} cents on fee {fee}: {outcome}")
            }
            LiveAction::EditAmount { fee, cents } => {
                edit_amount(conn, fee, cents)?;
                format!("office: fee {fee} amount + {cents} cents")
            }
            LiveAction::AddFee { like } => {
                let id = like * 10 + 7_000_000_000;
                add_fee(conn, like, id)?;
                format!("office: new fee {id} for the student of fee {like} (if not there yet)")
            }
        })
    }

    /// The live actions spread over a concurrent round (the pauses only
    /// spread them; what they are comes from the seed).
    fn live_beside(&self, actions: Vec<LiveAction>, seed: u64) -> anyhow::Result<Vec<String>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut conn = self.world.connect()?;
        let mut outcomes = Vec::new();
        for action in &actions {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
            outcomes.push(self.act(&mut conn, action)?);
        }
        Ok(outcomes)
    }

    /// Faults off: send, pull and reconcile until a nightly has nothing
    /// left to correct; returns the last nightly's JSON summary.
    fn finish(&mut self) -> anyhow::Result<serde_json::Value> {
        let must = |ended: Ended| -> anyhow::Result<Ended> {
            anyhow::ensure!(
                ended.succeeded() && ended.crashed(false).is_none(),
                "with faults off, {} exited {:?}: {}",
                ended.label,
                ended.code,
                tail(&ended.stderr)
            );
            Ok(ended)
        };
        must(self.world.engine.run(&["send-fees"])?)?;
        must(self.world.engine.run(&["get-payments"])?)?;
        must(self.world.engine.run(&["get-balances"])?)?;
        // The finishing run is incremental half the time; the further run is
        // always full, so anything an incremental run missed shows as work.
        let finishing: &[&str] = if self.rng.gen_bool(0.5) {
            &["nightly", "--incremental", "--json"]
        } else {
            &["nightly", "--json"]
        };
        self.event("finish: faults off, every task to its end");
        let first = nightly_json(must(self.world.engine.run(finishing)?)?)?;
        if first["failed_corrections"] != 0 {
            self.result.violations.push(format!(
                "the finishing nightly failed actions: {}",
                first["failures"]
            ));
        }
        let further = nightly_json(must(self.world.engine.run(&["nightly", "--json"])?)?)?;
        if further["counts"]["corrected"] != 0 || further["failed_corrections"] != 0 {
            self.result.violations.push(format!(
                "a further nightly still had work: {} corrected, {} failed, kinds {}",
                further["counts"]["corrected"],
                further["failed_corrections"],
                further["discrepancies"]
            ));
        }
        let pulled = must(self.world.engine.run(&["get-payments", "--json"])?)?;
        let pulled: serde_json::Value = serde_json::from_str(&pulled.stdout)?;
        if pulled["posted"] != 0 {
            self.result.violations.push(format!(
                "get-payments after the finish still posted {}",
                pulled["posted"]
            ));
        }
        Ok(further)
    }

    /// Commands whose standard output is closed before they write (a
    /// pipe into `head`) end with their normal code, never a panic, and
    /// leave no run "running".
    fn closed_pipes_end_quietly(&mut self) -> anyhow::Result<()> {
        for args in [
            &["runs", "--json"][..],
            &["nightly", "--dry-run", "--json", "--no-report"][..],
            &["unprocessed", "--json"][..],
        ] {
            let ended = self.world.engine.run_with_closed_stdout(args)?;
            if let Some(crash) = ended.crashed(false) {
                self.result.violations.push(crash);
            } else if !ended.succeeded() {
                self.result.violations.push(format!(
                    "{} with its output closed exited {:?}: {}",
                    ended.label,
                    ended.code,
                    tail(&ended.stderr)
                ));
            }
        }
        let mut conn = self.world.connect()?;
        let running: i64 = {
            use cpsync::db::schema::cp_runs::dsl::*;
            cp_runs
                .filter(status.eq("running"))
                .count()
                .get_result(&mut conn)?
        };
        if running > 0 {
            self.result.violations.push(format!(
                "{running} run(s) left \"running\" after commands whose output was closed"
            ));
        }
        self.result.closed_pipe_runs += 3;
        Ok(())
    }

    /// A lock row left by a process that is gone is taken over by the next
    /// nightly; one from another host is refused (exit 4) until `lock
    /// release --force`, after which the nightly runs.
    fn stale_lock_rows_are_handled(&mut self) -> anyhow::Result<()> {
        use cpsync::db::schema::cp_locks::dsl::*;
        use diesel::connection::SimpleConnection;
        let host = cpsync::db::owner::host_name();
        let dead_pid = 4_194_303; // above any pid_max in use
        let mut conn = self.world.connect()?;
        let stale = |conn: &mut cpsync::db::DbConnection, who: &str, id: i64| {
            conn.batch_execute("DELETE FROM cp_locks WHERE name = 'district'")?;
            diesel::insert_into(cp_locks)
                .values((
                    name.eq("district"),
                    holder.eq(who),
                    pid.eq(id),
                    acquired_at.eq(chrono::NaiveDate::from_ymd_opt(2026, 11, 1)
                        .and_then(|d| d.and_hms_opt(2, 0, 0))
                        .expect("a valid time")),
                ))
                .execute(conn)?;
            anyhow::Ok(())
        };
        stale(&mut conn, &format!("{host}:{dead_pid}"), dead_pid)?;
        let ended = self.world.engine.run(&["nightly", "--no-report"])?;
        if !ended.succeeded() {
            self.result.violations.push(format!(
                "a nightly after a dead process's lock row exited {:?}: {}",
                ended.code,
                tail(&ended.stderr)
            ));
        }
        stale(&mut conn, "another-host.example:4242", 4242)?;
        let refused = self.world.engine.run(&["nightly", "--no-report"])?;
        let released = self.world.engine.run(&["lock", "release", "--force"])?;
        let after = self.world.engine.run(&["nightly", "--no-report"])?;
        // On PostgreSQL the advisory lock is the truth (the server frees it
        // when its session dies): a row without it is taken over at once.
        let expected_first = if self.result.backend == "PostgreSQL" {
            refused.succeeded()
        } else {
            refused.code == Some(4)
        };
        if !expected_first || released.code != Some(0) || !after.succeeded() {
            self.result.violations.push(format!(
                "another host's lock row: nightly exited {:?} (want 4 on SQLite, 0 or 3 on PostgreSQL), lock release --force {:?} (want 0), then nightly {:?}: {}",
                refused.code,
                released.code,
                after.code,
                tail(&refused.stderr)
            ));
        }
        self.result.stale_locks_tried += 2;
        Ok(())
    }

    /// Holds the district lock in this process; a nightly must exit 4.
    fn lock_refuses_a_second_nightly(&mut self) -> anyhow::Result<()> {
        use cpsync::db::lock::{try_acquire, DISTRICT_LOCK};
        let now = chrono::Utc::now().naive_utc();
        let held = try_acquire(&self.world.database, DISTRICT_LOCK, None, now)?
            .map_err(|holder| anyhow::anyhow!("the lock is still held by {}", holder.holder))?;
        let ended = self.world.engine.run(&["nightly"])?;
        drop(held);
        if ended.code != Some(4) {
            self.result.violations.push(format!(
                "a nightly while the lock was held exited {:?}, not 4",
                ended.code
            ));
        }
        Ok(())
    }
}

fn nightly_json(ended: Ended) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(&ended.stdout)
        .map_err(|e| anyhow::anyhow!("{}: its --json output does not parse: {e}", ended.label))
}

fn edit_amount(conn: &mut cpsync::db::DbConnection, fee: i64, cents: i64) -> anyhow::Result<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(&format!(
        "UPDATE student_fees SET amount_cents = amount_cents + {cents} WHERE id = {fee}"
    ))?;
    Ok(())
}

/// A new fee for the same student as `like`, as office staff add one.
pub fn add_fee(conn: &mut cpsync::db::DbConnection, like: i64, id: i64) -> anyhow::Result<()> {
    use diesel::connection::SimpleConnection;
    conn.batch_execute(&format!(
        "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, \
         fee_date, due_date, status, created_at, modified_at) \
         SELECT {id}, student_id, category_code, school_code, 'Library fine', 350, \
         '2026-11-21', NULL, 'open', '2026-11-21 09:00:00', '2026-11-21 09:00:00' \
         FROM student_fees WHERE id = {like} AND NOT EXISTS (SELECT 1 FROM student_fees WHERE id = {id})"
    ))?;
    Ok(())
}

/// What `watch` says once its SIGTERM handler is installed.
const WATCH_READY: &str = "cpsync watch: waiting for fee changes";

/// One task of a round, planned before any runs.
struct Task {
    args: Vec<String>,
    what: &'static str,
    planned: Planned,
    /// A crash point (an abort is expected).
    crash: bool,
    /// `watch`: stopped with SIGTERM once the outbox is drained.
    watch: bool,
}

/// One office or parent action made during a round.
#[derive(Debug, Clone, Copy)]
enum LiveAction {
    Payment { fee: i64, cents: i64 },
    EditAmount { fee: i64, cents: i64 },
    AddFee { like: i64 },
}

/// A step of a serial round.
enum Step {
    Task(Task),
    Live(LiveAction),
}

/// Whether no outbox entry waits (watch's work is done); an error reading
/// counts as not yet.
fn outbox_drained(conn: &mut cpsync::db::DbConnection) -> bool {
    cpsync::db::outbox::pending_count(conn).is_ok_and(|n| n == 0)
}
