//! Profiling aid (not part of the product): fetches both snapshots from a
//! database and a running simulator, then times the reconciliation core.
//! Usage: prof_reconcile DB_URL CP_URL API_KEY [REPEAT]

use std::time::Instant;

use cpsync::db::{self, DatabaseUrl, OpenMode};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::reconcile::{check_accounting, reconcile, Scope};
use cpsync::secret::Secret;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut conn = db::connect(&DatabaseUrl::parse(&args[1])?, OpenMode::MustExist)?;
    let mut config = HttpPortalConfig::new(args[2].clone(), Secret::new(&args[3]));
    config.page_size = cpsync::portal::PAGE_SIZE_MAX;
    let portal = HttpPortal::new(config)?;
    let repeat: usize = args.get(4).map_or(3, |r| r.parse().unwrap());
    let setup = db::settings::load_setup(&mut conn)?;
    let policy = setup.policy();
    let scope = Scope::default();
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        let (genesis, vendor, _) = cpsync::sync::nightly::read_full(&mut conn, &portal, &scope)?;
        eprintln!("fetch {:?}", started.elapsed());
        let started = Instant::now();
        let rec = reconcile(&genesis, &vendor, &policy, &scope);
        check_accounting(&rec.accounting)?;
        eprintln!(
            "reconcile {:?} ({} discrepancies)",
            started.elapsed(),
            rec.discrepancies.len()
        );
        last = Some(format!("{:?}", rec));
    }
    if let Some(path) = args.get(5) {
        std::fs::write(path, last.unwrap())?;
    }
    Ok(())
}
