//! Date and timestamp columns read fast for the whole-table reads. SQLite
//! holds them as text: the form diesel writes (`YYYY-MM-DD` and
//! `YYYY-MM-DD HH:MM:SS`) is parsed directly, anything else goes through
//! diesel's own parser (same values, same errors). PostgreSQL's binary
//! values go through diesel unchanged.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::{Date, Timestamp};
use diesel::sqlite::{Sqlite, SqliteValue};

/// A `DATE` column.
#[derive(Debug, Clone, Copy, FromSqlRow)]
pub struct Day(pub NaiveDate);

/// A `TIMESTAMP` column.
#[derive(Debug, Clone, Copy, FromSqlRow)]
pub struct Stamp(pub NaiveDateTime);

fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |value, &byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u32::from(byte - b'0'))
    })
}

/// `YYYY-MM-DD` exactly, a valid date; `None` for anything else.
fn plain_date(bytes: &[u8]) -> Option<NaiveDate> {
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year = digits(&bytes[0..4])?;
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    NaiveDate::from_ymd_opt(year as i32, month, day)
}

/// `YYYY-MM-DD HH:MM:SS` exactly, valid (no leap second); `None` for
/// anything else.
fn plain_datetime(bytes: &[u8]) -> Option<NaiveDateTime> {
    if bytes.len() != 19 || bytes[10] != b' ' || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let date = plain_date(&bytes[..10])?;
    let hour = digits(&bytes[11..13])?;
    let minute = digits(&bytes[14..16])?;
    let second = digits(&bytes[17..19])?;
    Some(date.and_time(NaiveTime::from_hms_opt(hour, minute, second)?))
}

impl FromSql<Date, Sqlite> for Day {
    fn from_sql(mut value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        if let Some(date) = plain_date(value.read_text().as_bytes()) {
            return Ok(Day(date));
        }
        <NaiveDate as FromSql<Date, Sqlite>>::from_sql(value).map(Day)
    }
}

impl FromSql<Timestamp, Sqlite> for Stamp {
    fn from_sql(mut value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        if let Some(at) = plain_datetime(value.read_text().as_bytes()) {
            return Ok(Stamp(at));
        }
        <NaiveDateTime as FromSql<Timestamp, Sqlite>>::from_sql(value).map(Stamp)
    }
}

impl FromSql<Date, Pg> for Day {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        <NaiveDate as FromSql<Date, Pg>>::from_sql(value).map(Day)
    }
}

impl FromSql<Timestamp, Pg> for Stamp {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        <NaiveDateTime as FromSql<Timestamp, Pg>>::from_sql(value).map(Stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_datetime(text: &str) -> Option<NaiveDateTime> {
        NaiveDateTime::parse_from_str(text, "%F %T%.f").ok()
    }

    #[test]
    fn plain_forms_parse_as_chrono_does() {
        for text in [
            "2026-09-01 08:00:00",
            "1999-12-31 23:59:59",
            "2024-02-29 00:00:00",
            "0001-01-01 00:00:00",
        ] {
            assert_eq!(
                plain_datetime(text.as_bytes()),
                chrono_datetime(text),
                "{text}"
            );
            assert!(plain_datetime(text.as_bytes()).is_some());
        }
        assert_eq!(
            plain_date(b"2026-09-01"),
            NaiveDate::from_ymd_opt(2026, 9, 1)
        );
    }

    #[test]
    fn anything_else_is_left_to_diesel() {
        for text in [
            "2023-02-29 00:00:00",
            "2026-13-01 00:00:00",
            "2026-09-01 24:00:00",
            "2026-09-01 23:59:60",
            "2026-09-01T08:00:00",
            "2026-09-01 08:00:00.5",
            "2026-09-01 08:00",
            "+2026-09-01 08:00:0",
            "2026-9-01 08:00:00",
            "2026-09-01 08:00:0x",
            "",
        ] {
            assert_eq!(plain_datetime(text.as_bytes()), None, "{text}");
        }
        for text in [
            "2026-02-30",
            "2026-09-1",
            "20260901",
            "2026/09/01",
            "-026-09-01",
        ] {
            assert_eq!(plain_date(text.as_bytes()), None, "{text}");
        }
    }
}
