//! Setup values in `cp_settings` (one key per field, JSON values). Every
//! change is audited. The API key is never stored: only its fingerprint,
//! when it was recorded and the district its check answered for
//! (`record_api_key`); the key is read from its file or environment
//! variable at run time.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::audit::{self, AuditEntry, AuditSide};
use super::schema::cp_settings;
use super::{DbConnection, DbError};
use crate::secret::Secret;
use crate::setup::{KeyChange, SetupState};

/// The row where cpsync before migration `2026-11-29-000018` kept the API
/// key in plain text; read only by `migrate` to move it out, and removed by
/// that migration.
const LEGACY_API_KEY: &str = "api_key";
/// How a fingerprint is labelled: the hash and what follows is its start.
pub const FINGERPRINT_LABEL: &str = "sha256:";

/// The setting keys and how each field of `SetupState` is stored.
const KEYS: &[&str] = &[
    "api_key_fingerprint",
    "api_key_set_at",
    "api_key_district",
    "categories",
    "categories_confirmed_at",
    "excluded_schools",
    "patron_id",
    "test_pull_at",
    "test_push_at",
    "cutoff",
    "portal",
];

fn all_values(conn: &mut DbConnection) -> Result<BTreeMap<String, String>, DbError> {
    let rows: Vec<(String, String)> = cp_settings::table
        .select((cp_settings::key, cp_settings::value))
        .load(conn)?;
    Ok(rows.into_iter().collect())
}

fn decode<T: DeserializeOwned + Default>(
    values: &BTreeMap<String, String>,
    key: &str,
) -> Result<T, DbError> {
    match values.get(key) {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(text).map_err(|e| DbError::InvalidRow {
            table: "cp_settings",
            key: key.to_string(),
            reason: e.to_string(),
        }),
    }
}

fn encode(state: &SetupState) -> BTreeMap<&'static str, String> {
    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("setup values serialise")
    }
    let values = [
        json(&state.api_key_fingerprint),
        json(&state.api_key_set_at),
        json(&state.api_key_district),
        json(&state.categories),
        json(&state.categories_confirmed_at),
        json(&state.excluded_schools),
        json(&state.patron_id),
        json(&state.test_pull_at),
        json(&state.test_push_at),
        json(&state.cutoff),
        json(&state.portal),
    ];
    KEYS.iter().copied().zip(values).collect()
}

/// Reads the setup state; fields never set take their defaults.
pub fn load_setup(conn: &mut DbConnection) -> Result<SetupState, DbError> {
    let values = all_values(conn)?;
    Ok(SetupState {
        api_key_fingerprint: decode(&values, "api_key_fingerprint")?,
        api_key_set_at: decode(&values, "api_key_set_at")?,
        api_key_district: decode(&values, "api_key_district")?,
        categories: decode(&values, "categories")?,
        categories_confirmed_at: decode(&values, "categories_confirmed_at")?,
        excluded_schools: decode(&values, "excluded_schools")?,
        patron_id: decode(&values, "patron_id")?,
        test_pull_at: decode(&values, "test_pull_at")?,
        test_push_at: decode(&values, "test_push_at")?,
        cutoff: decode(&values, "cutoff")?,
        portal: decode(&values, "portal")?,
    })
}

fn put(conn: &mut DbConnection, key: &str, value: &str, now: NaiveDateTime) -> Result<(), DbError> {
    let updated = diesel::update(cp_settings::table.find(key))
        .set((
            cp_settings::value.eq(value),
            cp_settings::updated_at.eq(now),
        ))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(cp_settings::table)
            .values((
                cp_settings::key.eq(key),
                cp_settings::value.eq(value),
                cp_settings::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Stores every changed field of `state`, with one audit row per change.
pub fn save_setup(
    conn: &mut DbConnection,
    state: &SetupState,
    now: NaiveDateTime,
) -> Result<usize, DbError> {
    conn.transaction(|conn| {
        let before = all_values(conn)?;
        let defaults = encode(&SetupState::default());
        let mut changes = Vec::new();
        for (key, value) in encode(state) {
            let old = before.get(key).unwrap_or(&defaults[key]);
            if *old == value {
                continue;
            }
            put(conn, key, &value, now)?;
            changes.push(AuditEntry {
                run_id: None,
                at: now,
                side: AuditSide::Integration,
                entity: "setting",
                entity_id: key.to_string(),
                action: "set".to_string(),
                detail: Some(format!("{old} -> {value}")),
            });
        }
        audit::record(conn, &changes)?;
        Ok(changes.len())
    })
}

/// A short, labelled, non-reversible fingerprint of a key, safe to show
/// and to store: `sha256:` and the first 6 bytes of its SHA-256 in hex.
pub fn fingerprint(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose().as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{FINGERPRINT_LABEL}{hex}")
}

/// Records the fingerprint of an API key `setup api-key` has checked (the
/// key itself is not stored) and returns the setup state updated for it
/// with what kind of change it was (`SetupState::with_checked_api_key`).
pub fn record_api_key(
    conn: &mut DbConnection,
    key: &Secret,
    district: &str,
    now: NaiveDateTime,
) -> Result<(SetupState, KeyChange), DbError> {
    conn.transaction(|conn| {
        let (state, change) =
            load_setup(conn)?.with_checked_api_key(fingerprint(key), district.to_string(), now);
        save_setup(conn, &state, now)?;
        Ok((state, change))
    })
}

/// The API key an older cpsync stored in plain text, if the row is still
/// there (before migration `2026-11-29-000018_api_key_not_stored`). Only
/// `migrate` reads it, to make sure the key is kept elsewhere first.
pub fn legacy_plain_api_key(conn: &mut DbConnection) -> Result<Option<Secret>, DbError> {
    let value: Option<String> = cp_settings::table
        .find(LEGACY_API_KEY)
        .select(cp_settings::value)
        .first(conn)
        .optional()?;
    Ok(value.map(Secret::new))
}
