//! Profiling aid (not part of the product): times each read of the nightly
//! fetch on its own, against a database and a running simulator; `ser`
//! times serde_json over the fetched Community Pass records instead.
//! Usage: prof_fetch DB_URL CP_URL API_KEY [all|db|cp|ser]

use std::time::Instant;

use cpsync::db::{self, genesis, links, DatabaseUrl, OpenMode};
use cpsync::portal::http::{HttpPortal, HttpPortalConfig};
use cpsync::portal::{all_fees, transactions_after, TxnScope};
use cpsync::secret::Secret;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut conn = db::connect(&DatabaseUrl::parse(&args[1])?, OpenMode::MustExist)?;
    let mut config = HttpPortalConfig::new(args[2].clone(), Secret::new(&args[3]));
    config.page_size = cpsync::portal::PAGE_SIZE_MAX;
    let portal = HttpPortal::new(config)?;
    let what = args.get(4).map_or("all", String::as_str);
    if what == "ser" {
        let fees = all_fees(&portal, None)?;
        let txns = transactions_after(&portal, TxnScope::All, 0)?.items;
        for _ in 0..3 {
            let t = Instant::now();
            let fee_bytes = serde_json::to_vec(&fees)?;
            let txn_bytes = serde_json::to_vec(&txns)?;
            eprintln!("serialize {:?}", t.elapsed());
            let t = Instant::now();
            let back: Vec<cpsync::domain::VendorFee> = serde_json::from_slice(&fee_bytes)?;
            let back_txns: Vec<cpsync::domain::VendorTxn> = serde_json::from_slice(&txn_bytes)?;
            eprintln!(
                "deserialize {:?} ({} {})",
                t.elapsed(),
                back.len(),
                back_txns.len()
            );
            let t = Instant::now();
            let raw: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(&fee_bytes)?;
            let back: Vec<cpsync::domain::VendorFee> = raw
                .iter()
                .map(|item| serde_json::from_str(item.get()))
                .collect::<Result<_, _>>()?;
            let raw: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(&txn_bytes)?;
            let back_txns: Vec<cpsync::domain::VendorTxn> = raw
                .iter()
                .map(|item| serde_json::from_str(item.get()))
                .collect::<Result<_, _>>()?;
            eprintln!(
                "raw then items {:?} ({} {})",
                t.elapsed(),
                back.len(),
                back_txns.len()
            );
        }
        return Ok(());
    }
    for _ in 0..2 {
        if what == "all" || what == "db" {
            let t = Instant::now();
            let fees = genesis::load_fees(&mut conn, None)?;
            eprintln!("load_fees {:?} ({})", t.elapsed(), fees.records.len());
            let t = Instant::now();
            let txns = genesis::load_txns(&mut conn, None)?;
            eprintln!("load_txns {:?} ({})", t.elapsed(), txns.records.len());
            let t = Instant::now();
            let l = links::load_all(&mut conn)?;
            eprintln!("links {:?} ({})", t.elapsed(), l.len());
        }
        if what == "all" || what == "cp" {
            let t = Instant::now();
            let fees = all_fees(&portal, None)?;
            eprintln!("cp fees {:?} ({})", t.elapsed(), fees.len());
            let t = Instant::now();
            let txns = transactions_after(&portal, TxnScope::All, 0)?;
            eprintln!("cp txns {:?} ({})", t.elapsed(), txns.items.len());
        }
    }
    Ok(())
}
