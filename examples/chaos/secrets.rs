//! The secret scan: the API key, SMTP and SFTP passwords must not appear in
//! anything a scenario produced: every child's stdout and stderr, every file
//! written (export, reports, logs), and every text column of the database
//! (the API key included: the database keeps only its fingerprint).
//! Also checks that export and report files are owner-only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use diesel::sql_types::{Binary, Nullable, Text};
use diesel::RunQueryDsl;

use cpsync::db::DbConnection;

use crate::tally::ScenarioResult;
use crate::world::World;

/// The most files one scan reads, and the most bytes of each.
const FILES_MAX: usize = 20_000;
const FILE_BYTES_MAX: u64 = 64 << 20;
/// Files the scenario wrote itself to hand the key to the engine.
const KEY_FILES: [&str; 1] = ["api-key"];

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(diesel::QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    t: String,
    #[diesel(sql_type = Text)]
    c: String,
}

#[derive(diesel::QueryableByName)]
struct Value {
    #[diesel(sql_type = Nullable<Binary>)]
    v: Option<Vec<u8>>,
}

pub fn scan(world: &World, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let mut files = Vec::new();
    walk(&world.dir, &mut files)?;
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if KEY_FILES.contains(&name) || is_database_file(name) {
            continue;
        }
        let bytes = read_bounded(path)?;
        result.bytes_scanned += bytes.len() as u64;
        look_for(world, &bytes, &path.display().to_string(), result);
        owner_only(world, path, result)?;
    }
    let mut conn = world.connect()?;
    for (table, column) in text_columns(&mut conn)? {
        for value in column_values(&mut conn, &table, &column)? {
            result.bytes_scanned += value.len() as u64;
            look_for(world, &value, &format!("database {table}.{column}"), result);
        }
    }
    Ok(())
}

fn is_database_file(name: &str) -> bool {
    ["genesis.db", "genesis.db-wal", "genesis.db-shm"].contains(&name)
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), files)?;
        } else if kind.is_file() {
            anyhow::ensure!(
                files.len() < FILES_MAX,
                "more than {FILES_MAX} files to scan"
            );
            files.push(entry.path());
        }
    }
    Ok(())
}

fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(FILE_BYTES_MAX)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn look_for(world: &World, haystack: &[u8], place: &str, result: &mut ScenarioResult) {
    for (what, secret) in world.secrets.all() {
        let needle = secret.as_bytes();
        if haystack.windows(needle.len()).any(|w| w == needle) {
            result
                .secrets_found
                .push(format!("the {what} appears in {place}"));
        }
    }
}

/// Export and report files must be readable by their owner only.
fn owner_only(world: &World, path: &Path, result: &mut ScenarioResult) -> anyhow::Result<()> {
    let relative = path.strip_prefix(&world.dir)?;
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    if !matches!(first.as_deref(), Some("export") | Some("reports")) {
        return Ok(());
    }
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        result.violations.push(format!(
            "{} has mode {mode:o}, not owner-only",
            relative.display()
        ));
    }
    let parent_mode = std::fs::metadata(path.parent().unwrap_or(path))?
        .permissions()
        .mode()
        & 0o777;
    if parent_mode & 0o077 != 0 {
        result.violations.push(format!(
            "the folder of {} has mode {parent_mode:o}, not owner-only",
            relative.display()
        ));
    }
    Ok(())
}

fn text_columns(conn: &mut DbConnection) -> anyhow::Result<Vec<(String, String)>> {
    match conn {
        DbConnection::Sqlite(c) => {
            let tables: Vec<Name> = diesel::sql_query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .load(c)?;
            let mut columns = Vec::new();
            for table in tables {
                let names: Vec<Name> = diesel::sql_query(format!(
                    "SELECT name FROM pragma_table_info('{}')",
                    table.name
                ))
                .load(c)?;
                columns.extend(names.into_iter().map(|n| (table.name.clone(), n.name)));
            }
            Ok(columns)
        }
        DbConnection::Pg(c) => {
            let columns: Vec<Column> = diesel::sql_query(
                "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
                 WHERE table_schema = 'public'",
            )
            .load(c)?;
            Ok(columns.into_iter().map(|c| (c.t, c.c)).collect())
        }
    }
}

/// Every value of one column as bytes (invalid UTF-8 included).
fn column_values(
    conn: &mut DbConnection,
    table: &str,
    column: &str,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let rows: Vec<Value> = match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(format!(
            "SELECT CAST(\"{column}\" AS BLOB) AS v FROM \"{table}\""
        ))
        .load(c)?,
        DbConnection::Pg(c) => diesel::sql_query(format!(
            "SELECT convert_to(CAST(\"{column}\" AS TEXT), 'UTF8') AS v FROM \"{table}\""
        ))
        .load(c)?,
    };
    Ok(rows.into_iter().filter_map(|r| r.v).collect())
}
