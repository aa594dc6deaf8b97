//! A whole test world: a migrated database on one backend seeded with a
//! small district, an in-process Community Pass simulator, setup completed
//! (real Test Pull and Test Push), and every eligible fee sent.

use chrono::NaiveDate;
use cpsync::db::{outbox, runs, settings, DbConnection};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::portal::CommunityPass;
use cpsync::secret::Secret;
use cpsync::seed::{self, SeedOptions};
use cpsync::setup::{CategorySelection, SetupState};
use cpsync::sim::{AdminClient, SimConfig, SimHandle, Simulator};
use cpsync::sync::nightly::{self, NightlyOptions, NightlyResult};
use cpsync::sync::{push, utc_now};

use super::{Backend, TestDb};

pub const API_KEY: &str = "sk_test_world_4f1c9a";
pub const CUTOFF: (i32, u32, u32) = (2026, 8, 1);

pub struct World {
    pub db: TestDb,
    pub sim: SimHandle,
    pub admin: AdminClient,
    pub portal: HttpPortal,
    pub setup: SetupState,
}

impl World {
    pub fn new(backend: Backend, students: usize, seed: u64) -> World {
        let db = TestDb::migrated(backend);
        let sim = Simulator::start(SimConfig::new(Secret::new(API_KEY))).expect("simulator starts");
        let admin = sim.admin().expect("admin client");
        let portal = HttpPortal::new(HttpPortalConfig::new(sim.base_url(), Secret::new(API_KEY)))
            .expect("portal client");
        let mut conn = db.connect();
        seed::store(&mut conn, &seed::generate(SeedOptions { students, seed })).unwrap();
        let setup = complete_setup(&mut conn, &portal);
        let world = World {
            db,
            sim,
            admin,
            portal,
            setup,
        };
        world.send_pending();
        world
    }

    pub fn conn(&self) -> DbConnection {
        self.db.connect()
    }

    /// Runs SQL statements on the Genesis database, as the SIS would.
    pub fn sql(&self, statements: &str) {
        use diesel::connection::SimpleConnection;
        self.conn()
            .batch_execute(statements)
            .unwrap_or_else(|e| panic!("{statements}: {e}"));
    }

    /// Open, eligible fees of at least $10 with nothing paid yet, in id
    /// order: the ones a test may pay, edit or delete freely.
    pub fn unpaid_fees(&self) -> Vec<cpsync::domain::GenesisFee> {
        use cpsync::db::genesis;
        let mut conn = self.conn();
        let fees = genesis::load_fees(&mut conn, None).unwrap().records;
        let txns = genesis::load_txns(&mut conn, None).unwrap().records;
        let policy = self.setup.policy();
        fees.into_iter()
            .filter(|f| policy.eligibility(f).is_ok())
            .filter(|f| {
                f.status == cpsync::domain::FeeStatus::Open
                    && f.amount >= cpsync::money::Money::from_cents(1_000)
            })
            .filter(|f| !txns.iter().any(|t| t.fee_id == f.id))
            .collect()
    }

    pub fn run_id(&self, conn: &mut DbConnection, task: &str) -> i64 {
        runs::start_run(conn, task, "test", false, utc_now()).unwrap()
    }

    /// Drains the outbox; panics if any push failed.
    pub fn send_pending(&self) -> push::PushReport {
        let mut conn = self.conn();
        let run_id = self.run_id(&mut conn, "send_fees");
        let report =
            push::drain_outbox(&mut conn, &self.portal, &self.setup, run_id, &utc_now).unwrap();
        assert_eq!(report.failed, 0, "{:?}", report.problems);
        report
    }

    pub fn nightly(&self, dry_run: bool) -> NightlyResult {
        self.nightly_with(&NightlyOptions {
            dry_run,
            ..NightlyOptions::default()
        })
    }

    /// An incremental nightly (full when it cannot be incremental). The
    /// simulator's clock is exact, so changed fees are read from the mark's
    /// clock itself, without the production overlap.
    pub fn incremental_nightly(&self, dry_run: bool) -> NightlyResult {
        self.nightly_with(&NightlyOptions {
            dry_run,
            incremental: true,
            vendor_clock_overlap: chrono::Duration::zero(),
            ..NightlyOptions::default()
        })
    }

    pub fn nightly_with(&self, options: &NightlyOptions) -> NightlyResult {
        let mut conn = self.conn();
        let run_id = self.run_id(&mut conn, "nightly_sync");
        nightly::run(
            &mut conn,
            &self.portal,
            &self.setup,
            options,
            run_id,
            &utc_now,
        )
        .unwrap()
    }
}

/// Setup in the handbook's order, with real connection tests; queues every
/// eligible fee like `cpsync setup cutoff` does.
pub fn complete_setup(conn: &mut DbConnection, portal: &HttpPortal) -> SetupState {
    let now = utc_now();
    let check = portal.test_pull().unwrap();
    let (mut state, _) =
        settings::record_api_key(conn, &Secret::new(API_KEY), &check.district, now).unwrap();
    state.categories = CategorySelection::All;
    state.categories_confirmed_at = Some(now);
    portal.test_pull().unwrap();
    state.test_pull_at = Some(now);
    portal.test_push().unwrap();
    state.test_push_at = Some(now);
    state.cutoff = NaiveDate::from_ymd_opt(CUTOFF.0, CUTOFF.1, CUTOFF.2);
    settings::save_setup(conn, &state, now).unwrap();
    let eligible = push::eligible_fee_ids(conn, &state, None).unwrap();
    outbox::enqueue(conn, &eligible, "cutoff_set", now).unwrap();
    state
}
