//! A full disk, for real: a small tmpfs mounted for the test (the suite runs
//! as root, as CI does; without root the test fails and says why). The
//! Genesis SQLite file lives on it while `get-payments` runs out of room,
//! and an export is written into it. Each run ends with exit 1 and the
//! first error in words ("database or disk is full", "No space left on
//! device"), never a rollback that found no transaction; nothing half
//! written is left; and once there is room again the next run finishes the
//! work, each vendor transaction posted once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use cpsync::domain::VendorFeeStatus;
use cpsync::money::Money;
use cpsync::portal::all_fees;

use super::common::TestDb;
use super::payments::each_vendor_txn_posted_once;
use super::Env;

/// Bytes written at a time while filling the disk.
const FILL_CHUNK_BYTES: usize = 64 * 1024;

/// A tmpfs of `size` mounted on a fresh folder; unmounted on drop.
struct SmallDisk {
    mount: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        assert!(
            nix_is_root(),
            "the disk-full tests mount a small tmpfs and need root (CI runs the suite as root); \
             run scripts/test as root"
        );
        let parent = tempfile::tempdir().expect("a temporary folder");
        let mount = parent.path().join("small");
        std::fs::create_dir(&mount).expect("the mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&mount)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        SmallDisk {
            mount,
            _parent: parent,
        }
    }

    fn path(&self) -> &Path {
        &self.mount
    }

    /// Fills the disk, then frees `headroom` bytes; returns the filler.
    fn fill_leaving(&self, headroom: u64) -> PathBuf {
        let filler = self.mount.join("filler");
        let mut file = File::create(&filler).expect("the filler file");
        let chunk = vec![0x5au8; FILL_CHUNK_BYTES];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = file.flush();
        let len = file.metadata().expect("filler metadata").len();
        let freed = OpenOptions::new().write(true).open(&filler).unwrap();
        freed.set_len(len.saturating_sub(headroom)).unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn nix_is_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// Pays a dollar on every open fee the vendor holds, up to `most`.
fn pay_many(env: &Env, most: usize) -> usize {
    let fees = all_fees(&env.portal, None).expect("the vendor's fees");
    let mut paid = 0;
    for fee in fees
        .iter()
        .filter(|f| f.status == VendorFeeStatus::Open && f.balance >= Money::from_cents(100))
        .take(most)
    {
        env.admin
            .pay(fee.genesis_fee_id, Some(Money::from_cents(100)))
            .expect("a payment");
        paid += 1;
    }
    paid
}

fn runs_left_running(env: &Env) -> i64 {
    use cpsync::db::schema::cp_runs;
    use diesel::prelude::*;
    cp_runs::table
        .filter(cp_runs::status.eq("running"))
        .count()
        .get_result(&mut env.conn())
        .expect("count running runs")
}

#[test]
fn get_payments_on_a_full_disk_says_so_and_the_next_run_finishes() {
    let disk = SmallDisk::mount("24m");
    let env = Env::with_db(TestDb::migrated_sqlite_in(disk.path()));
    env.seed(40);
    env.set_up();
    env.ok(&["send-fees"]);
    let paid = pay_many(&env, 200);
    assert!(
        paid >= 100,
        "enough payments to outgrow the room left: {paid}"
    );
    env.sql("PRAGMA wal_checkpoint(TRUNCATE)");

    let filler = disk.fill_leaving(32 * 1024);
    let (code, stdout, stderr) = env.run(&["get-payments"]);
    assert_eq!(
        code, 1,
        "a full disk fails the run with exit 1\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("database or disk is full"),
        "the first error, in words: {stderr}"
    );
    assert!(
        !stderr.contains("cannot rollback") && !stderr.contains("no transaction is active"),
        "the real error is not replaced by the rollback's: {stderr}"
    );

    std::fs::remove_file(&filler).expect("room again");
    env.ok(&["get-payments"]);
    let in_cp = each_vendor_txn_posted_once(&env, &mut env.conn());
    assert_eq!(in_cp, paid, "every payment made is in the vendor's log");
    assert_eq!(
        runs_left_running(&env),
        0,
        "no run is left running after a full disk"
    );
}

#[test]
fn an_export_to_a_full_disk_says_so_and_leaves_nothing_behind() {
    let disk = SmallDisk::mount("1m");
    let env = Env::new(super::common::Backend::Sqlite);
    env.seed(300);
    let config = env.dir().join("cpsync.toml");
    std::fs::write(&config, "district = \"Full Disk SD\"\n").expect("config");
    let out = disk.path().join("exports");
    disk.fill_leaving(16 * 1024);
    let (code, stdout, stderr) = env.run(&[
        "--config",
        config.to_str().unwrap(),
        "export",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        code, 1,
        "a full disk fails the export\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "the first error, in words: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no partial bundle left: {left:?}");
    assert_eq!(runs_left_running(&env), 0, "the export run is closed");
}
