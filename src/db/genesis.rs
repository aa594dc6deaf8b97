//! The Genesis contract: row types for the SIS tables, their mapping to the
//! domain records (cents ↔ `Money`, codes ↔ enums), and the narrow set of
//! queries the engine uses to read them. A district whose schema differs
//! adapts by defining SQL views with these names and columns.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;

use super::schema::{
    fee_categories, fee_transactions, guardians, schools, student_fees, student_guardians, students,
};
use super::sql_time::{Day, Stamp};
use super::{DbConnection, DbError};
use crate::domain::{
    FeeCategory, FeeId, GenesisFee, GenesisTxn, Guardian, GuardianId, GuardianLink, NewGenesisTxn,
    School, Student, StudentId, VendorTxnId,
};
use crate::money::Money;

/// A row that could not become a domain record, with the reason. The run
/// reports it and goes on with the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub table: &'static str,
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for RejectedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.table, self.key, self.reason)
    }
}

/// Records read from a table, and the rows that were rejected.
#[derive(Debug, Clone, Default)]
pub struct Loaded<T> {
    pub records: Vec<T>,
    pub rejected: Vec<RejectedRow>,
}

impl<T> Loaded<T> {
    fn from_results(results: impl IntoIterator<Item = Result<T, RejectedRow>>) -> Loaded<T> {
        let mut loaded = Loaded {
            records: Vec::new(),
            rejected: Vec::new(),
        };
        for result in results {
            match result {
                Ok(record) => loaded.records.push(record),
                Err(rejected) => loaded.rejected.push(rejected),
            }
        }
        loaded
    }
}

fn reject(table: &'static str, key: impl ToString, reason: impl ToString) -> RejectedRow {
    RejectedRow {
        table,
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn amount_from_cents(table: &'static str, key: i64, cents: i64) -> Result<Money, RejectedRow> {
    if cents.abs() > crate::money::AMOUNT_ABS_MAX_CENTS {
        return Err(reject(
            table,
            key,
            format!("amount {cents} cents is out of range"),
        ));
    }
    Ok(Money::from_cents(cents))
}

// ---- rows ----

#[derive(Insertable)]
#[diesel(table_name = schools)]
struct SchoolRow<'a> {
    code: &'a str,
    name: &'a str,
    low_grade: &'a str,
    high_grade: &'a str,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = schools)]
struct SchoolReadRow {
    code: String,
    name: String,
    low_grade: String,
    high_grade: String,
}

#[derive(Insertable, Queryable, Selectable)]
#[diesel(table_name = students)]
struct StudentRow {
    id: i64,
    first_name: String,
    last_name: String,
    grade: String,
    school_code: String,
    status: String,
    birth_date: NaiveDate,
    email: Option<String>,
}

#[derive(Insertable, Queryable, Selectable)]
#[diesel(table_name = guardians)]
struct GuardianRow {
    id: i64,
    first_name: String,
    last_name: String,
    email: Option<String>,
    phone: Option<String>,
    portal_username: Option<String>,
}

#[derive(Insertable, Queryable, Selectable)]
#[diesel(table_name = student_guardians)]
struct GuardianLinkRow {
    student_id: i64,
    guardian_id: i64,
    relationship: String,
    household: i32,
    portal_access: bool,
    billing_contact: bool,
}

#[derive(Insertable)]
#[diesel(table_name = fee_categories)]
struct FeeCategoryRow<'a> {
    code: &'a str,
    description: &'a str,
    default_amount_cents: i64,
}

#[derive(Insertable)]
#[diesel(table_name = student_fees)]
struct FeeRow {
    id: i64,
    student_id: i64,
    category_code: String,
    school_code: String,
    description: String,
    amount_cents: i64,
    fee_date: NaiveDate,
    due_date: Option<NaiveDate>,
    status: String,
    created_at: NaiveDateTime,
    modified_at: NaiveDateTime,
}

/// A fee as read (dates through `sql_time`, run on the backend's own
/// connection: these reads cover whole tables).
#[derive(Queryable, Selectable)]
#[diesel(table_name = student_fees)]
struct FeeReadRow {
    id: i64,
    student_id: i64,
    category_code: String,
    school_code: String,
    description: String,
    amount_cents: i64,
    fee_date: Day,
    due_date: Option<Day>,
    status: String,
    created_at: Stamp,
    modified_at: Stamp,
}

#[derive(Insertable)]
#[diesel(table_name = fee_transactions)]
struct NewTxnRow<'a> {
    fee_id: i64,
    kind: &'a str,
    amount_cents: i64,
    method: &'a str,
    source: &'a str,
    vendor_txn_id: Option<&'a str>,
    posted_at: NaiveDateTime,
    note: Option<&'a str>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = fee_transactions)]
struct TxnRow {
    id: i64,
    fee_id: i64,
    kind: String,
    amount_cents: i64,
    method: String,
    source: String,
    vendor_txn_id: Option<String>,
    posted_at: Stamp,
}

// ---- mapping ----

impl StudentRow {
    fn from_domain(s: &Student) -> StudentRow {
        StudentRow {
            id: s.id.0,
            first_name: s.first_name.clone(),
            last_name: s.last_name.clone(),
            grade: s.grade.clone(),
            school_code: s.school.clone(),
            status: s.status.as_str().to_string(),
            birth_date: s.birth_date,
            email: s.email.clone(),
        }
    }

    fn into_domain(self) -> Result<Student, RejectedRow> {
        let status = self
            .status
            .parse()
            .map_err(|e| reject("students", self.id, e))?;
        Ok(Student {
            id: StudentId(self.id),
            first_name: self.first_name,
            last_name: self.last_name,
            grade: self.grade,
            school: self.school_code,
            status,
            birth_date: self.birth_date,
            email: self.email,
        })
    }
}

impl GuardianRow {
    fn from_domain(g: &Guardian) -> GuardianRow {
        GuardianRow {
            id: g.id.0,
            first_name: g.first_name.clone(),
            last_name: g.last_name.clone(),
            email: g.email.clone(),
            phone: g.phone.clone(),
            portal_username: g.portal_username.clone(),
        }
    }

    fn into_domain(self) -> Guardian {
        Guardian {
            id: GuardianId(self.id),
            first_name: self.first_name,
            last_name: self.last_name,
            email: self.email,
            phone: self.phone,
            portal_username: self.portal_username,
        }
    }
}

impl GuardianLinkRow {
    fn from_domain(l: &GuardianLink) -> GuardianLinkRow {
        GuardianLinkRow {
            student_id: l.student_id.0,
            guardian_id: l.guardian_id.0,
            relationship: l.relationship.clone(),
            household: l.household,
            portal_access: l.portal_access,
            billing_contact: l.billing_contact,
        }
    }

    fn into_domain(self) -> GuardianLink {
        GuardianLink {
            student_id: StudentId(self.student_id),
            guardian_id: GuardianId(self.guardian_id),
            relationship: self.relationship,
            household: self.household,
            portal_access: self.portal_access,
            billing_contact: self.billing_contact,
        }
    }
}

impl FeeRow {
    fn from_domain(f: &GenesisFee) -> FeeRow {
        FeeRow {
            id: f.id.0,
            student_id: f.student_id.0,
            category_code: f.category.clone(),
            school_code: f.school.clone(),
            description: f.description.clone(),
            amount_cents: f.amount.cents(),
            fee_date: f.fee_date,
            due_date: f.due_date,
            status: f.status.as_str().to_string(),
            created_at: f.created_at,
            modified_at: f.modified_at,
        }
    }
}

impl FeeReadRow {
    fn into_domain(self) -> Result<GenesisFee, RejectedRow> {
        let amount = amount_from_cents("student_fees", self.id, self.amount_cents)?;
        if amount.is_negative() {
            return Err(reject("student_fees", self.id, "negative amount"));
        }
        let status = self
            .status
            .parse()
            .map_err(|e| reject("student_fees", self.id, e))?;
        Ok(GenesisFee {
            id: FeeId(self.id),
            student_id: StudentId(self.student_id),
            category: self.category_code,
            school: self.school_code,
            description: self.description,
            amount,
            fee_date: self.fee_date.0,
            due_date: self.due_date.map(|day| day.0),
            status,
            created_at: self.created_at.0,
            modified_at: self.modified_at.0,
        })
    }
}

impl TxnRow {
    fn into_domain(self) -> Result<GenesisTxn, RejectedRow> {
        let table = "fee_transactions";
        let amount = amount_from_cents(table, self.id, self.amount_cents)?;
        if !amount.is_positive() {
            return Err(reject(table, self.id, "amount must be positive"));
        }
        Ok(GenesisTxn {
            id: self.id,
            fee_id: FeeId(self.fee_id),
            kind: self.kind.parse().map_err(|e| reject(table, self.id, e))?,
            amount,
            method: self.method,
            source: self.source.parse().map_err(|e| reject(table, self.id, e))?,
            vendor_txn_id: self.vendor_txn_id.map(VendorTxnId),
            posted_at: self.posted_at.0,
        })
    }
}

// ---- writes (batch; used by the seed and by imports) ----

/// Largest number of rows in one multi-row INSERT (PostgreSQL allows 65,535
/// bind parameters; the widest row has 11 columns).
pub const INSERT_BATCH_ROWS: usize = 2_000;

pub fn insert_schools(conn: &mut DbConnection, rows: &[School]) -> Result<usize, DbError> {
    let rows: Vec<SchoolRow> = rows
        .iter()
        .map(|s| SchoolRow {
            code: &s.code,
            name: &s.name,
            low_grade: &s.low_grade,
            high_grade: &s.high_grade,
        })
        .collect();
    insert_batched!(conn, schools::table, rows)
}

pub fn insert_fee_categories(
    conn: &mut DbConnection,
    rows: &[FeeCategory],
) -> Result<usize, DbError> {
    let rows: Vec<FeeCategoryRow> = rows
        .iter()
        .map(|c| FeeCategoryRow {
            code: &c.code,
            description: &c.description,
            default_amount_cents: c.default_amount.cents(),
        })
        .collect();
    insert_batched!(conn, fee_categories::table, rows)
}

pub fn insert_students(conn: &mut DbConnection, rows: &[Student]) -> Result<usize, DbError> {
    let rows: Vec<StudentRow> = rows.iter().map(StudentRow::from_domain).collect();
    insert_batched!(conn, students::table, rows)
}

pub fn insert_guardians(conn: &mut DbConnection, rows: &[Guardian]) -> Result<usize, DbError> {
    let rows: Vec<GuardianRow> = rows.iter().map(GuardianRow::from_domain).collect();
    insert_batched!(conn, guardians::table, rows)
}

pub fn insert_guardian_links(
    conn: &mut DbConnection,
    rows: &[GuardianLink],
) -> Result<usize, DbError> {
    let rows: Vec<GuardianLinkRow> = rows.iter().map(GuardianLinkRow::from_domain).collect();
    insert_batched!(conn, student_guardians::table, rows)
}

pub fn insert_fees(conn: &mut DbConnection, rows: &[GenesisFee]) -> Result<usize, DbError> {
    let rows: Vec<FeeRow> = rows.iter().map(FeeRow::from_domain).collect();
    insert_batched!(conn, student_fees::table, rows)
}

pub fn insert_txns(conn: &mut DbConnection, rows: &[NewGenesisTxn]) -> Result<usize, DbError> {
    let rows: Vec<NewTxnRow> = rows
        .iter()
        .map(|t| NewTxnRow {
            fee_id: t.fee_id.0,
            kind: t.kind.as_str(),
            amount_cents: t.amount.cents(),
            method: &t.method,
            source: t.source.as_str(),
            vendor_txn_id: t.vendor_txn_id.as_ref().map(|v| v.0.as_str()),
            posted_at: t.posted_at,
            note: t.note.as_deref(),
        })
        .collect();
    insert_batched!(conn, fee_transactions::table, rows)
}

// ---- reads ----

/// Every school, ordered by code.
pub fn load_schools(conn: &mut DbConnection) -> Result<Vec<School>, DbError> {
    let rows: Vec<SchoolReadRow> = schools::table
        .select(SchoolReadRow::as_select())
        .order(schools::code)
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| School {
            code: r.code,
            name: r.name,
            low_grade: r.low_grade,
            high_grade: r.high_grade,
        })
        .collect())
}

/// Every student, ordered by id.
pub fn load_students(conn: &mut DbConnection) -> Result<Loaded<Student>, DbError> {
    let rows: Vec<StudentRow> = students::table
        .select(StudentRow::as_select())
        .order(students::id)
        .load(conn)?;
    Ok(Loaded::from_results(
        rows.into_iter().map(StudentRow::into_domain),
    ))
}

/// Every guardian, ordered by id.
pub fn load_guardians(conn: &mut DbConnection) -> Result<Vec<Guardian>, DbError> {
    let rows: Vec<GuardianRow> = guardians::table
        .select(GuardianRow::as_select())
        .order(guardians::id)
        .load(conn)?;
    Ok(rows.into_iter().map(GuardianRow::into_domain).collect())
}

/// Every student–guardian link, ordered by student then guardian.
pub fn load_guardian_links(conn: &mut DbConnection) -> Result<Vec<GuardianLink>, DbError> {
    let rows: Vec<GuardianLinkRow> = student_guardians::table
        .select(GuardianLinkRow::as_select())
        .order((
            student_guardians::student_id,
            student_guardians::guardian_id,
        ))
        .load(conn)?;
    Ok(rows.into_iter().map(GuardianLinkRow::into_domain).collect())
}

/// Every fee, optionally of one student, ordered by id.
pub fn load_fees(
    conn: &mut DbConnection,
    student: Option<StudentId>,
) -> Result<Loaded<GenesisFee>, DbError> {
    let rows: Vec<FeeReadRow> = crate::with_backend!(conn, |c| {
        let mut query = student_fees::table
            .select(FeeReadRow::as_select())
            .order(student_fees::id)
            .into_boxed();
        if let Some(student) = student {
            query = query.filter(student_fees::student_id.eq(student.0));
        }
        query.load(c)
    })?;
    Ok(Loaded::from_results(
        rows.into_iter().map(FeeReadRow::into_domain),
    ))
}

/// Every fee transaction, optionally of one student's fees, ordered by id.
pub fn load_txns(
    conn: &mut DbConnection,
    student: Option<StudentId>,
) -> Result<Loaded<GenesisTxn>, DbError> {
    let rows: Vec<TxnRow> = crate::with_backend!(conn, |c| {
        let mut query = fee_transactions::table
            .select(TxnRow::as_select())
            .order(fee_transactions::id)
            .into_boxed();
        if let Some(student) = student {
            let fee_ids = student_fees::table
                .filter(student_fees::student_id.eq(student.0))
                .select(student_fees::id);
            query = query.filter(fee_transactions::fee_id.eq_any(fee_ids));
        }
        query.load(c)
    })?;
    Ok(Loaded::from_results(
        rows.into_iter().map(TxnRow::into_domain),
    ))
}

/// Row counts of the Genesis tables, for summaries and checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GenesisCounts {
    pub schools: i64,
    pub students: i64,
    pub guardians: i64,
    pub guardian_links: i64,
    pub fee_categories: i64,
    pub fees: i64,
    pub transactions: i64,
}

pub fn counts(conn: &mut DbConnection) -> Result<GenesisCounts, DbError> {
    Ok(GenesisCounts {
        schools: schools::table.count().get_result(conn)?,
        students: students::table.count().get_result(conn)?,
        guardians: guardians::table.count().get_result(conn)?,
        guardian_links: student_guardians::table.count().get_result(conn)?,
        fee_categories: fee_categories::table.count().get_result(conn)?,
        fees: student_fees::table.count().get_result(conn)?,
        transactions: fee_transactions::table.count().get_result(conn)?,
    })
}

/// The fees with these ids (those that exist), ordered by id.
pub fn load_fees_by_ids(
    conn: &mut DbConnection,
    ids: &[FeeId],
) -> Result<Loaded<GenesisFee>, DbError> {
    let mut results = Vec::new();
    for chunk in ids.chunks(INSERT_BATCH_ROWS) {
        let raw: Vec<i64> = chunk.iter().map(|f| f.0).collect();
        let rows: Vec<FeeReadRow> = crate::with_backend!(conn, |c| student_fees::table
            .filter(student_fees::id.eq_any(raw))
            .order(student_fees::id)
            .select(FeeReadRow::as_select())
            .load(c))?;
        results.extend(rows.into_iter().map(FeeReadRow::into_domain));
    }
    Ok(Loaded::from_results(results))
}

/// The transactions of these fees, ordered by id.
pub fn load_txns_for_fees(
    conn: &mut DbConnection,
    ids: &[FeeId],
) -> Result<Loaded<GenesisTxn>, DbError> {
    let mut results = Vec::new();
    for chunk in ids.chunks(INSERT_BATCH_ROWS) {
        let raw: Vec<i64> = chunk.iter().map(|f| f.0).collect();
        let rows: Vec<TxnRow> = crate::with_backend!(conn, |c| fee_transactions::table
            .filter(fee_transactions::fee_id.eq_any(raw))
            .order(fee_transactions::id)
            .select(TxnRow::as_select())
            .load(c))?;
        results.extend(rows.into_iter().map(TxnRow::into_domain));
    }
    Ok(Loaded::from_results(results))
}

/// The guardian links of these students, ordered by student then guardian.
pub fn load_guardian_links_for(
    conn: &mut DbConnection,
    students: &[StudentId],
) -> Result<Vec<GuardianLink>, DbError> {
    let mut links = Vec::new();
    for chunk in students.chunks(INSERT_BATCH_ROWS) {
        let raw: Vec<i64> = chunk.iter().map(|s| s.0).collect();
        let rows: Vec<GuardianLinkRow> = student_guardians::table
            .filter(student_guardians::student_id.eq_any(raw))
            .order((
                student_guardians::student_id,
                student_guardians::guardian_id,
            ))
            .select(GuardianLinkRow::as_select())
            .load(conn)?;
        links.extend(rows.into_iter().map(GuardianLinkRow::into_domain));
    }
    Ok(links)
}

/// Whether Genesis has this guardian (contact) at all.
pub fn guardian_exists(conn: &mut DbConnection, guardian: GuardianId) -> Result<bool, DbError> {
    use diesel::dsl::{exists, select};
    Ok(select(exists(guardians::table.find(guardian.0))).get_result(conn)?)
}

/// The students a guardian is linked to, with or without portal access.
pub fn students_of_guardian(
    conn: &mut DbConnection,
    guardian: GuardianId,
    portal_access_only: bool,
) -> Result<Vec<StudentId>, DbError> {
    let mut query = student_guardians::table
        .filter(student_guardians::guardian_id.eq(guardian.0))
        .select(student_guardians::student_id)
        .order(student_guardians::student_id)
        .into_boxed();
    if portal_access_only {
        query = query.filter(student_guardians::portal_access.eq(true));
    }
    Ok(query
        .load::<i64>(conn)?
        .into_iter()
        .map(StudentId)
        .collect())
}

/// The students with these ids, ordered by id.
pub fn load_students_by_ids(
    conn: &mut DbConnection,
    ids: &[StudentId],
) -> Result<Loaded<Student>, DbError> {
    let raw: Vec<i64> = ids.iter().map(|s| s.0).collect();
    let rows: Vec<StudentRow> = students::table
        .filter(students::id.eq_any(raw))
        .order(students::id)
        .select(StudentRow::as_select())
        .load(conn)?;
    Ok(Loaded::from_results(
        rows.into_iter().map(StudentRow::into_domain),
    ))
}

/// The guardians with these ids, ordered by id.
pub fn load_guardians_by_ids(
    conn: &mut DbConnection,
    ids: &[GuardianId],
) -> Result<Vec<Guardian>, DbError> {
    let mut guardians_found = Vec::new();
    for chunk in ids.chunks(INSERT_BATCH_ROWS) {
        let raw: Vec<i64> = chunk.iter().map(|g| g.0).collect();
        let rows: Vec<GuardianRow> = guardians::table
            .filter(guardians::id.eq_any(raw))
            .order(guardians::id)
            .select(GuardianRow::as_select())
            .load(conn)?;
        guardians_found.extend(rows.into_iter().map(GuardianRow::into_domain));
    }
    Ok(guardians_found)
}

/// Every fee category code, ordered.
pub fn load_category_codes(conn: &mut DbConnection) -> Result<Vec<String>, DbError> {
    Ok(fee_categories::table
        .order(fee_categories::code)
        .select(fee_categories::code)
        .load(conn)?)
}
