//! `cpsync demo --nights N`: after the demo's first night, a month of nights
//! played in a minute, so the report's trend, the review queue's ages and
//! the credits on account have something real to show. Each night, dated
//! one day after the last (the process clock is set back, `sync::utc_now`):
//! office staff add and edit fees (some pushes lost, as in real incidents),
//! record office payments, sometimes edit a fee a parent already paid;
//! parents pay, overpay, pay part, and some payments are refunded or
//! returned; then the night's real commands run in order (send-fees,
//! get-payments, get-balances, nightly with its report), and once a week
//! the business office works the review queue. One line per night.

use chrono::{Duration, NaiveDateTime};
use diesel::connection::SimpleConnection;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::db::{review_items, runs, DbConnection};
use crate::domain::{FeeId, TxnKind, VendorFee, VendorFeeStatus, VendorTxn};
use crate::money::Money;
use crate::portal::{all_fees, CommunityPass};
use crate::sim::model::{ActionOutcome, FeeRef};
use crate::sim::{AdminClient, ParentAction};

/// The most nights one demo plays.
pub const NIGHTS_MAX: u32 = 90;
/// The first id of the fees the office adds during the nights.
const NIGHT_FEE_ID_FIRST: i64 = 9_100_000;
/// Open fees a parent pays on one night, per thousand (at least one).
const PAID_PER_MILLE_PER_NIGHT: usize = 15;

/// Runs one cpsync command in-process; returns its exit code.
pub type Command<'a> = &'a dyn Fn(&[&str]) -> anyhow::Result<u8>;

/// What the nights need: the database, Community Pass, its admin door and
/// the command runner.
pub struct Nights<'a> {
    pub conn: &'a mut DbConnection,
    pub portal: &'a dyn CommunityPass,
    pub admin: AdminClient,
    pub cpsync: Command<'a>,
    pub seed: u64,
    pub total: u32,
}

/// What happened on one night, for its line.
#[derive(Default)]
struct NightLog {
    payments: u32,
    credits: u32,
    refunds: u32,
    office: Vec<&'static str>,
    queue_work: Option<String>,
}

impl Nights<'_> {
    /// Plays nights 2..=total (night 1 was the demo's first nightly); the
    /// clock of night `k` is `total - k` days behind the wall clock.
    pub fn play(mut self) -> anyhow::Result<()> {
        let mut payments: Vec<VendorTxn> = Vec::new();
        for night in 2..=self.total {
            crate::sync::set_clock_back(Duration::days(i64::from(self.total - night)));
            let now = crate::sync::utc_now();
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (u64::from(night) << 32));
            let mut log = NightLog::default();
            let (code, run) = crate::cli::output::muted(|| -> anyhow::Result<_> {
                self.office_day(night, now, &mut rng, &mut log)?;
                self.parents_day(now, &mut rng, &mut payments, &mut log)?;
                (self.cpsync)(&["get-payments"])?;
                (self.cpsync)(&["get-balances"])?;
                let code = (self.cpsync)(&["nightly"])?;
                if night % 7 == 0 {
                    log.queue_work = self.work_the_queue()?;
                }
                let run = runs::recent_runs(self.conn, Some("nightly_sync"), 1)?
                    .into_iter()
                    .next();
                Ok((code, run))
            })?;
            out!("{}", night_line(now, &log, code, run.as_ref()));
        }
        crate::sync::set_clock_back(Duration::zero());
        Ok(())
    }

    /// Office staff at work in Genesis: a new fee pushed at once; an edit
    /// and a new fee whose pushes are lost; now and then an office payment
    /// (push lost) or an edit of a fee a parent already paid.
    fn office_day(
        &mut self,
        night: u32,
        now: NaiveDateTime,
        rng: &mut ChaCha8Rng,
        log: &mut NightLog,
    ) -> anyhow::Result<()> {
        let open = self.open_fees()?;
        let (Some(like), Some(edited)) = (open.choose(rng), open.choose(rng)) else {
            return Ok(());
        };
        let new_id = NIGHT_FEE_ID_FIRST + i64::from(night) * 10;
        let at = (now - Duration::hours(rng.gen_range(8..14))).format("%Y-%m-%d %H:%M:%S");
        let day = now.date();
        self.conn.batch_execute(&new_fee_sql(
            new_id,
            like.genesis_fee_id,
            day,
            &at.to_string(),
            "Library fine",
            350,
        ))?;
        log.office.push("new fee");
        (self.cpsync)(&["send-fees"])?;
        // What the instant push never carried: the nightly must find these.
        let mut lost = String::new();
        if rng.gen_bool(0.5) {
            lost.push_str(&format!(
                "UPDATE student_fees SET amount_cents = amount_cents + 500 WHERE id = {};\n",
                edited.genesis_fee_id
            ));
            log.office.push("edit (push lost)");
        }
        if rng.gen_bool(0.3) {
            lost.push_str(&new_fee_sql(
                new_id + 1,
                like.genesis_fee_id,
                day,
                &at.to_string(),
                "Replacement student ID card",
                1_000,
            ));
            log.office.push("new fee (push lost)");
        }
        if rng.gen_bool(0.2) {
            lost.push_str(&format!(
                "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at, note) \
                 VALUES ({}, 'payment', {}, 'cash', 'genesis', '{at}', 'Paid at the school office');\n",
                like.genesis_fee_id,
                (like.balance.cents() / 2).max(1)
            ));
            log.office.push("office payment (push lost)");
        }
        if !lost.is_empty() {
            lost.push_str(
                "UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL;\n",
            );
            self.conn.batch_execute(&lost)?;
        }
        if rng.gen_bool(0.15) {
            if let Some(paid) = self.paid_fee(rng)? {
                self.conn.batch_execute(&format!(
                    "UPDATE student_fees SET amount_cents = amount_cents + 1500 WHERE id = {paid}"
                ))?;
                (self.cpsync)(&["send-fees"])?;
                log.office.push("edit after an online payment");
            }
        }
        Ok(())
    }

    /// Parents at work in Community Pass: payments in full, in part and
    /// over the fee (a credit), and refunds or returned e-checks of
    /// payments from earlier nights.
    fn parents_day(
        &mut self,
        now: NaiveDateTime,
        rng: &mut ChaCha8Rng,
        payments: &mut Vec<VendorTxn>,
        log: &mut NightLog,
    ) -> anyhow::Result<()> {
        let mut open = self.open_fees()?;
        open.shuffle(rng);
        let count = (open.len() * PAID_PER_MILLE_PER_NIGHT / 1_000).max(1);
        let mut actions = Vec::new();
        for fee in open.iter().take(count) {
            let at = now - Duration::minutes(rng.gen_range(60..600));
            let roll = rng.gen_range(0..100);
            let amount = match roll {
                0..=79 => None,
                80..=94 if fee.balance.cents() >= 200 => {
                    Some(Money::from_cents(fee.balance.cents() / 2))
                }
                _ => {
                    log.credits += 1;
                    Some(fee.balance + Money::from_cents(rng.gen_range(100..2_500)))
                }
            };
            actions.push(ParentAction::Payment {
                fee: FeeRef::Genesis(fee.genesis_fee_id),
                amount,
                method: Some(if rng.gen_bool(0.8) { "card" } else { "echeck" }.to_string()),
                occurred_at: Some(at),
            });
        }
        let old_enough = |t: &&VendorTxn| t.occurred_at < now - Duration::days(3);
        if let Some(paid) = payments
            .iter()
            .filter(old_enough)
            .collect::<Vec<_>>()
            .choose(rng)
        {
            if rng.gen_bool(0.4) {
                actions.push(if paid.method == "echeck" {
                    ParentAction::Reversal {
                        payment_id: paid.id.clone(),
                        days_later: Some(2),
                    }
                } else {
                    ParentAction::Refund {
                        payment_id: paid.id.clone(),
                        amount: None,
                        occurred_at: Some(now - Duration::hours(2)),
                    }
                });
                log.refunds += 1;
                let id = paid.id.clone();
                payments.retain(|t| t.id != id);
            }
        }
        for outcome in self.admin.act(actions)? {
            if let ActionOutcome::Transaction(txn) = outcome {
                if txn.kind == TxnKind::Payment {
                    log.payments += 1;
                    payments.push(txn);
                }
            }
        }
        Ok(())
    }

    /// The business office's weekly pass over the queue: the oldest item
    /// is resolved with a note, the next one acknowledged.
    fn work_the_queue(&mut self) -> anyhow::Result<Option<String>> {
        let open = review_items::list(self.conn, &review_items::ListFilter::default())?;
        let mut done = Vec::new();
        if let Some(oldest) = open.first() {
            let id = oldest.id.to_string();
            (self.cpsync)(&[
                "review",
                "resolve",
                &id,
                "--note",
                "Refund check mailed to the family",
                "--by",
                "Business office",
            ])?;
            done.push(format!("resolved #{id}"));
        }
        if let Some(next) = open.get(1) {
            let id = next.id.to_string();
            (self.cpsync)(&[
                "review",
                "ack",
                &id,
                "--note",
                "Called the family; waiting to hear back",
                "--by",
                "Business office",
            ])?;
            done.push(format!("acknowledged #{id}"));
        }
        Ok((!done.is_empty()).then(|| done.join(", ")))
    }

    /// Community Pass's open fees with something left to pay.
    fn open_fees(&self) -> anyhow::Result<Vec<VendorFee>> {
        Ok(all_fees(self.portal, None)?
            .into_iter()
            .filter(|f| f.status == VendorFeeStatus::Open && f.balance.is_positive())
            .collect())
    }

    /// A fee a parent paid in full online, if any.
    fn paid_fee(&self, rng: &mut ChaCha8Rng) -> anyhow::Result<Option<FeeId>> {
        let paid: Vec<FeeId> = all_fees(self.portal, None)?
            .into_iter()
            .filter(|f| f.status == VendorFeeStatus::Paid && f.paid.is_positive())
            .map(|f| f.genesis_fee_id)
            .collect();
        Ok(paid.choose(rng).copied())
    }
}

/// A new fee for the student of fee `like`, dated `day`.
fn new_fee_sql(
    id: i64,
    like: FeeId,
    day: chrono::NaiveDate,
    at: &str,
    what: &str,
    cents: i64,
) -> String {
    format!(
        "INSERT INTO student_fees (id, student_id, category_code, school_code, description, amount_cents, \
         fee_date, due_date, status, created_at, modified_at) \
         SELECT {id}, student_id, category_code, school_code, '{what}', {cents}, \
         '{day}', '{due}', 'open', '{at}', '{at}' FROM student_fees WHERE id = {like};\n",
        due = day + Duration::days(30),
    )
}

/// `2026-11-05  12 paid (1 over), 1 refunded; office: new fee, edit (push
/// lost)  →  run 14 needs_review: 3 corrected, 21 need review`.
fn night_line(
    now: NaiveDateTime,
    log: &NightLog,
    code: u8,
    run: Option<&runs::RunRecord>,
) -> String {
    let office = if log.office.is_empty() {
        "nothing".to_string()
    } else {
        log.office.join(", ")
    };
    let run = run.map_or_else(
        || format!("nightly exited {code}"),
        |r| {
            format!(
                "run {} {}: {} corrected, {} need review",
                r.id,
                r.status.replace('_', " "),
                r.corrected,
                r.needs_review
            )
        },
    );
    let queue = log
        .queue_work
        .as_ref()
        .map(|w| format!("; office queue: {w}"))
        .unwrap_or_default();
    format!(
        "        {}  {} paid ({} over), {} refunded or returned; office: {office}  →  {run}{queue}",
        now.date(),
        log.payments,
        log.credits,
        log.refunds
    )
}
