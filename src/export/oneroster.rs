//! The OneRoster 1.1 CSV binding of a Genesis snapshot, built by pure
//! functions: `orgs.csv` (the district and its schools), `users.csv`
//! (students and their guardians, linked both ways through
//! `agentSourcedIds`), `demographics.csv` (students' birth dates) and
//! `manifest.csv`.
//!
//! Choices, each one deliberate:
//! - **Bulk mode.** Every file is a full snapshot (`file.X = bulk` in the
//!   manifest), so `status` and `dateLastModified` are blank, as OneRoster
//!   requires of bulk files. The receiver replaces what it had; there are no
//!   deltas to lose. The output is a function of the data alone: the same
//!   snapshot gives byte-identical files.
//! - **Withdrawn students** stay in `users.csv` with `enabledUser=false`
//!   (OneRoster's inactive user): their families may still owe fees, so the
//!   account must stay resolvable. (`status=tobedeleted` is a delta-mode
//!   value and cannot appear in a bulk file.)
//! - **Guardians** get role `parent` (mother, father, step-parent), `relative`
//!   (grandparent, aunt, ...) or `guardian` (anything else), the closest
//!   relationship winning when they have several children. Their
//!   `orgSourcedIds` are their children's schools; they are enabled when
//!   some link gives them portal access to an active student. A guardian
//!   linked to no student is left out and counted in [`Omitted`].
//! - **Ids**: `student-{id}`, `guardian-{id}`, `school-{code}` and
//!   `district`; `identifier` carries the Genesis id or school code.
//! - **Row order**: orgs by district then school code, users by students
//!   (id) then guardians (id), id lists sorted.

use std::collections::{BTreeMap, BTreeSet};

use super::csv_cell::CsvFile;
use super::{Bundle, ExportError, ExportFile, Omitted, Snapshot};
use crate::domain::{Guardian, GuardianId, GuardianLink, Student, StudentId, StudentStatus};

pub const ORGS_FILE: &str = "orgs.csv";
pub const USERS_FILE: &str = "users.csv";
pub const DEMOGRAPHICS_FILE: &str = "demographics.csv";
pub const MANIFEST_FILE: &str = "manifest.csv";

/// OneRoster 1.1 `orgs.csv` columns, in order.
pub const ORGS_HEADER: [&str; 7] = [
    "sourcedId",
    "status",
    "dateLastModified",
    "name",
    "type",
    "identifier",
    "parentSourcedId",
];

/// OneRoster 1.1 `users.csv` columns, in order.
pub const USERS_HEADER: [&str; 18] = [
    "sourcedId",
    "status",
    "dateLastModified",
    "enabledUser",
    "orgSourcedIds",
    "role",
    "username",
    "userIds",
    "givenName",
    "familyName",
    "middleName",
    "identifier",
    "email",
    "sms",
    "phone",
    "agentSourcedIds",
    "grades",
    "password",
];

/// OneRoster 1.1 `demographics.csv` columns, in order.
pub const DEMOGRAPHICS_HEADER: [&str; 16] = [
    "sourcedId",
    "status",
    "dateLastModified",
    "birthDate",
    "sex",
    "americanIndianOrAlaskaNative",
    "asian",
    "blackOrAfricanAmerican",
    "nativeHawaiianOrOtherPacificIslander",
    "white",
    "demographicRaceTwoOrMoreRaces",
    "hispanicOrLatinoEthnicity",
    "countryOfBirthCode",
    "stateOfBirthAbbreviation",
    "cityOfBirth",
    "publicSchoolResidenceStatus",
];

/// OneRoster 1.1 `manifest.csv` columns.
pub const MANIFEST_HEADER: [&str; 2] = ["propertyName", "value"];

/// Every file a OneRoster 1.1 manifest declares, in the specification's order.
pub const ONEROSTER_FILES: [&str; 13] = [
    "academicSessions",
    "categories",
    "classes",
    "classResources",
    "courses",
    "courseResources",
    "demographics",
    "enrollments",
    "lineItems",
    "orgs",
    "resources",
    "results",
    "users",
];

/// The files this export supplies (the others are `absent`).
const SUPPLIED_FILES: [&str; 3] = ["demographics", "orgs", "users"];

pub const DISTRICT_SOURCED_ID: &str = "district";

pub fn school_sourced_id(code: &str) -> String {
    format!("school-{code}")
}

pub fn student_sourced_id(id: StudentId) -> String {
    format!("student-{id}")
}

pub fn guardian_sourced_id(id: GuardianId) -> String {
    format!("guardian-{id}")
}

/// Builds every file of the export from `snapshot`.
pub fn build(snapshot: &Snapshot) -> Result<Bundle, ExportError> {
    let family = Family::resolve(snapshot)?;
    let files = vec![
        orgs_csv(snapshot)?,
        users_csv(&family)?,
        demographics_csv(&family)?,
        manifest_csv()?,
    ];
    Ok(Bundle {
        files,
        omitted: family.omitted,
    })
}

/// Students and guardians in output order, with their links resolved both ways.
struct Family<'a> {
    students: Vec<&'a Student>,
    guardians: Vec<&'a Guardian>,
    guardians_of: BTreeMap<StudentId, Vec<&'a GuardianLink>>,
    students_of: BTreeMap<GuardianId, Vec<(&'a GuardianLink, &'a Student)>>,
    omitted: Omitted,
}

impl<'a> Family<'a> {
    fn resolve(snapshot: &'a Snapshot) -> Result<Family<'a>, ExportError> {
        let schools: BTreeSet<&str> = snapshot.schools.iter().map(|s| s.code.as_str()).collect();
        let mut students: Vec<&Student> = snapshot.students.iter().collect();
        students.sort_by_key(|s| s.id);
        if let Some(s) = students
            .iter()
            .find(|s| !schools.contains(s.school.as_str()))
        {
            return Err(ExportError::UnknownSchool {
                student: s.id.0,
                school: s.school.clone(),
            });
        }
        let by_id: BTreeMap<StudentId, &Student> = students.iter().map(|s| (s.id, *s)).collect();
        let guardian_ids: BTreeSet<GuardianId> = snapshot.guardians.iter().map(|g| g.id).collect();
        let mut family = Family {
            students,
            guardians: Vec::new(),
            guardians_of: BTreeMap::new(),
            students_of: BTreeMap::new(),
            omitted: Omitted::default(),
        };
        for link in &snapshot.links {
            match by_id.get(&link.student_id) {
                Some(student) if guardian_ids.contains(&link.guardian_id) => {
                    family
                        .guardians_of
                        .entry(link.student_id)
                        .or_default()
                        .push(link);
                    family
                        .students_of
                        .entry(link.guardian_id)
                        .or_default()
                        .push((link, student));
                }
                _ => family.omitted.unresolved_links += 1,
            }
        }
        for links in family.guardians_of.values_mut() {
            links.sort_by_key(|l| l.guardian_id);
        }
        for links in family.students_of.values_mut() {
            links.sort_by_key(|(l, _)| l.student_id);
        }
        let mut guardians: Vec<&Guardian> = snapshot.guardians.iter().collect();
        guardians.sort_by_key(|g| g.id);
        let (linked, unlinked): (Vec<&Guardian>, Vec<&Guardian>) = guardians
            .into_iter()
            .partition(|g| family.students_of.contains_key(&g.id));
        family.guardians = linked;
        family.omitted.guardians_without_students = unlinked.len();
        Ok(family)
    }
}

fn finish(file: CsvFile, name: &'static str) -> Result<ExportFile, ExportError> {
    let (bytes, rows) = file.finish()?;
    Ok(ExportFile::new(name, bytes, rows))
}

fn orgs_csv(snapshot: &Snapshot) -> Result<ExportFile, ExportError> {
    let mut file = CsvFile::new(ORGS_FILE, &ORGS_HEADER)?;
    file.row(&[
        DISTRICT_SOURCED_ID,
        "",
        "",
        &snapshot.district_name,
        "district",
        "",
        "",
    ])?;
    let mut schools: Vec<_> = snapshot.schools.iter().collect();
    schools.sort_by(|a, b| a.code.cmp(&b.code));
    for school in schools {
        file.row(&[
            &school_sourced_id(&school.code),
            "",
            "",
            &school.name,
            "school",
            &school.code,
            DISTRICT_SOURCED_ID,
        ])?;
    }
    finish(file, ORGS_FILE)
}

fn users_csv(family: &Family) -> Result<ExportFile, ExportError> {
    let mut file = CsvFile::new(USERS_FILE, &USERS_HEADER)?;
    let no_links = Vec::new();
    for student in &family.students {
        let links = family.guardians_of.get(&student.id).unwrap_or(&no_links);
        student_row(&mut file, student, links)?;
    }
    for guardian in &family.guardians {
        let links = family.students_of.get(&guardian.id).map(Vec::as_slice);
        guardian_row(&mut file, guardian, links.unwrap_or_default())?;
    }
    finish(file, USERS_FILE)
}

fn student_row(
    file: &mut CsvFile,
    student: &Student,
    links: &[&GuardianLink],
) -> Result<(), ExportError> {
    let sourced_id = student_sourced_id(student.id);
    let agents: Vec<String> = links
        .iter()
        .map(|l| guardian_sourced_id(l.guardian_id))
        .collect();
    let username = student.email.clone().unwrap_or_else(|| sourced_id.clone());
    file.row(&[
        &sourced_id,
        "",
        "",
        bool_text(student.status == StudentStatus::Active),
        &school_sourced_id(&student.school),
        "student",
        &username,
        "",
        &student.first_name,
        &student.last_name,
        "",
        &student.id.to_string(),
        student.email.as_deref().unwrap_or(""),
        "",
        "",
        &agents.join(","),
        &oneroster_grade(&student.grade),
        "",
    ])
}

fn guardian_row(
    file: &mut CsvFile,
    guardian: &Guardian,
    links: &[(&GuardianLink, &Student)],
) -> Result<(), ExportError> {
    let sourced_id = guardian_sourced_id(guardian.id);
    let schools: BTreeSet<String> = links
        .iter()
        .map(|(_, s)| school_sourced_id(&s.school))
        .collect();
    let children: Vec<String> = links
        .iter()
        .map(|(l, _)| student_sourced_id(l.student_id))
        .collect();
    let role = links
        .iter()
        .map(|(l, _)| GuardianRole::from_relationship(&l.relationship))
        .max()
        .unwrap_or(GuardianRole::Guardian);
    let enabled = links
        .iter()
        .any(|(l, s)| l.portal_access && s.status == StudentStatus::Active);
    let username = guardian
        .portal_username
        .clone()
        .or_else(|| guardian.email.clone())
        .unwrap_or_else(|| sourced_id.clone());
    file.row(&[
        &sourced_id,
        "",
        "",
        bool_text(enabled),
        &schools.into_iter().collect::<Vec<_>>().join(","),
        role.as_str(),
        &username,
        "",
        &guardian.first_name,
        &guardian.last_name,
        "",
        &guardian.id.to_string(),
        guardian.email.as_deref().unwrap_or(""),
        "",
        guardian.phone.as_deref().unwrap_or(""),
        &children.join(","),
        "",
        "",
    ])
}

fn demographics_csv(family: &Family) -> Result<ExportFile, ExportError> {
    let mut file = CsvFile::new(DEMOGRAPHICS_FILE, &DEMOGRAPHICS_HEADER)?;
    for student in &family.students {
        let sourced_id = student_sourced_id(student.id);
        let birth_date = student.birth_date.format("%Y-%m-%d").to_string();
        let mut row = [""; DEMOGRAPHICS_HEADER.len()];
        row[0] = &sourced_id;
        row[3] = &birth_date;
        file.row(&row)?;
    }
    finish(file, DEMOGRAPHICS_FILE)
}

fn manifest_csv() -> Result<ExportFile, ExportError> {
    let mut file = CsvFile::new(MANIFEST_FILE, &MANIFEST_HEADER)?;
    file.row(&["manifest.version", "1.0"])?;
    file.row(&["oneroster.version", "1.1"])?;
    for name in ONEROSTER_FILES {
        let mode = if SUPPLIED_FILES.contains(&name) {
            "bulk"
        } else {
            "absent"
        };
        file.row(&[&format!("file.{name}"), mode])?;
    }
    file.row(&["source.systemName", "Genesis"])?;
    file.row(&["source.systemCode", "cpsync"])?;
    finish(file, MANIFEST_FILE)
}

fn bool_text(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

/// A Genesis grade as a CEDS grade code (OneRoster's `grades` vocabulary):
/// `K` → `KG`, `1` → `01`; anything else is passed through.
pub fn oneroster_grade(grade: &str) -> String {
    let grade = grade.trim();
    match grade {
        "K" | "KG" | "KN" => "KG".to_string(),
        "PK" | "P" => "PK".to_string(),
        _ => match grade.parse::<u8>() {
            Ok(n @ 1..=13) => format!("{n:02}"),
            _ => grade.to_string(),
        },
    }
}

/// A guardian's OneRoster role; the order is closeness (a parent wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GuardianRole {
    Relative,
    Guardian,
    Parent,
}

impl GuardianRole {
    const PARENT_WORDS: [&'static str; 9] = [
        "mother",
        "father",
        "parent",
        "stepmother",
        "stepfather",
        "stepparent",
        "step-parent",
        "foster parent",
        "adoptive parent",
    ];
    const RELATIVE_WORDS: [&'static str; 8] = [
        "grandmother",
        "grandfather",
        "grandparent",
        "aunt",
        "uncle",
        "sister",
        "brother",
        "relative",
    ];

    pub fn from_relationship(relationship: &str) -> GuardianRole {
        let relationship = relationship.trim().to_lowercase();
        if Self::PARENT_WORDS.contains(&relationship.as_str()) {
            GuardianRole::Parent
        } else if Self::RELATIVE_WORDS.contains(&relationship.as_str()) {
            GuardianRole::Relative
        } else {
            GuardianRole::Guardian
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuardianRole::Relative => "relative",
            GuardianRole::Guardian => "guardian",
            GuardianRole::Parent => "parent",
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::domain::School;
    use crate::export::check::check;

    fn school(code: &str, name: &str) -> School {
        School {
            code: code.into(),
            name: name.into(),
            low_grade: "K".into(),
            high_grade: "05".into(),
        }
    }

    fn student(id: i64, first: &str, last: &str, status: StudentStatus) -> Student {
        Student {
            id: StudentId(id),
            first_name: first.into(),
            last_name: last.into(),
            grade: "K".into(),
            school: "ES01".into(),
            status,
            birth_date: NaiveDate::from_ymd_opt(2020, 10, 2).unwrap(),
            email: Some(format!("s{id}@students.example.org")),
        }
    }

    fn guardian(id: i64, first: &str, last: &str) -> Guardian {
        Guardian {
            id: GuardianId(id),
            first_name: first.into(),
            last_name: last.into(),
            email: Some(format!("g{id}@example.com")),
            phone: Some("+1 555 0100".into()),
            portal_username: None,
        }
    }

    fn link(student: i64, guardian: i64, relationship: &str, portal: bool) -> GuardianLink {
        GuardianLink {
            student_id: StudentId(student),
            guardian_id: GuardianId(guardian),
            relationship: relationship.into(),
            household: 1,
            portal_access: portal,
            billing_contact: false,
        }
    }

    /// A small district with every awkward value the files must survive.
    fn snapshot() -> Snapshot {
        Snapshot {
            district_name: "=Township, \"North\"".into(),
            schools: vec![
                school("MS01", "Lincoln, Middle"),
                school("ES01", "@Elm\nSchool"),
            ],
            students: vec![
                student(102, "-Ann", "O'Neil, Jr.", StudentStatus::Withdrawn),
                student(101, "Bo \"B\"", "+Smith", StudentStatus::Active),
            ],
            guardians: vec![
                guardian(7, "Cy", "Smith"),
                guardian(5, "Di", "Smith"),
                guardian(9, "Ed", "Nobody"),
            ],
            links: vec![
                link(101, 5, "Mother", true),
                link(101, 7, "Grandfather", true),
                link(102, 7, "Father", false),
                link(999, 5, "Mother", true),
            ],
        }
    }

    fn text(bundle: &Bundle, name: &str) -> String {
        String::from_utf8(bundle.file(name).unwrap().bytes.clone()).unwrap()
    }

    fn rows(bundle: &Bundle, name: &str) -> Vec<Vec<String>> {
        let bytes = &bundle.file(name).unwrap().bytes;
        csv::Reader::from_reader(bytes.as_slice())
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn every_file_has_the_exact_oneroster_header() {
        let bundle = build(&snapshot()).unwrap();
        let expected: [(&str, &[&str]); 4] = [
            (ORGS_FILE, &ORGS_HEADER),
            (USERS_FILE, &USERS_HEADER),
            (DEMOGRAPHICS_FILE, &DEMOGRAPHICS_HEADER),
            (MANIFEST_FILE, &MANIFEST_HEADER),
        ];
        let names: Vec<&str> = bundle.files.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [ORGS_FILE, USERS_FILE, DEMOGRAPHICS_FILE, MANIFEST_FILE]
        );
        for (name, header) in expected {
            let first_line = text(&bundle, name)
                .split("\r\n")
                .next()
                .unwrap()
                .to_string();
            assert_eq!(first_line, header.join(","), "{name}");
        }
        assert_eq!(
            USERS_HEADER.join(","),
            "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,\
             givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password"
        );
        check(&bundle).unwrap();
    }

    #[test]
    fn orgs_are_quoted_and_kept_as_data() {
        let bundle = build(&snapshot()).unwrap();
        let text = text(&bundle, ORGS_FILE);
        assert!(
            text.contains("district,,,\"=Township, \"\"North\"\"\",district,,\r\n"),
            "{text}"
        );
        assert!(
            text.contains("school-ES01,,,\"@Elm\nSchool\",school,ES01,district\r\n"),
            "{text}"
        );
        assert!(
            text.contains("school-MS01,,,\"Lincoln, Middle\",school,MS01,district\r\n"),
            "{text}"
        );
        let rows = rows(&bundle, ORGS_FILE);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1][3], "@Elm\nSchool");
    }

    #[test]
    fn users_link_students_and_guardians_both_ways() {
        let bundle = build(&snapshot()).unwrap();
        let rows = rows(&bundle, USERS_FILE);
        let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            ids,
            ["student-101", "student-102", "guardian-5", "guardian-7"]
        );
        let bo = &rows[0];
        assert_eq!(bo[3], "true");
        assert_eq!(bo[5], "student");
        assert_eq!(bo[8], "Bo \"B\"");
        assert_eq!(bo[9], "+Smith");
        assert_eq!(bo[15], "guardian-5,guardian-7");
        assert_eq!(bo[16], "KG");
        let ann = &rows[1];
        assert_eq!(
            (ann[1].as_str(), ann[3].as_str()),
            ("", "false"),
            "withdrawn"
        );
        assert_eq!(ann[8], "-Ann");
        assert_eq!(ann[15], "guardian-7");
        let cy = &rows[3];
        assert_eq!(
            cy[5], "parent",
            "father of one beats grandfather of another"
        );
        assert_eq!(cy[15], "student-101,student-102");
        assert_eq!(cy[4], "school-ES01");
        assert_eq!(
            cy[14], "+1 555 0100",
            "a machine feed keeps the phone as it is"
        );
        assert_eq!(rows[2][5], "parent");
        for row in &rows {
            assert_eq!((row[1].as_str(), row[2].as_str()), ("", ""), "bulk mode");
        }
        let raw = text(&bundle, USERS_FILE);
        assert!(raw.contains(",\"O'Neil, Jr.\","), "{raw}");
        assert!(raw.contains(",\"guardian-5,guardian-7\","), "{raw}");
    }

    #[test]
    fn left_out_records_are_counted() {
        let bundle = build(&snapshot()).unwrap();
        assert_eq!(bundle.omitted.guardians_without_students, 1);
        assert_eq!(bundle.omitted.unresolved_links, 1);
    }

    #[test]
    fn demographics_carry_birth_dates_of_every_student() {
        let bundle = build(&snapshot()).unwrap();
        let rows = rows(&bundle, DEMOGRAPHICS_FILE);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0], "student-101");
        assert_eq!(rows[0][3], "2020-10-02");
        assert!(rows[0].iter().skip(4).all(String::is_empty));
        assert!(
            text(&bundle, DEMOGRAPHICS_FILE).ends_with("student-102,,,2020-10-02,,,,,,,,,,,,\r\n")
        );
    }

    #[test]
    fn manifest_declares_bulk_files_and_versions() {
        let bundle = build(&snapshot()).unwrap();
        let rows = rows(&bundle, MANIFEST_FILE);
        let value = |key: &str| rows.iter().find(|r| r[0] == key).map(|r| r[1].clone());
        assert_eq!(value("manifest.version").as_deref(), Some("1.0"));
        assert_eq!(value("oneroster.version").as_deref(), Some("1.1"));
        assert_eq!(value("file.users").as_deref(), Some("bulk"));
        assert_eq!(value("file.orgs").as_deref(), Some("bulk"));
        assert_eq!(value("file.demographics").as_deref(), Some("bulk"));
        assert_eq!(value("file.enrollments").as_deref(), Some("absent"));
        assert_eq!(
            rows.iter().filter(|r| r[0].starts_with("file.")).count(),
            13
        );
    }

    #[test]
    fn output_does_not_depend_on_input_order() {
        let first = build(&snapshot()).unwrap();
        let mut shuffled = snapshot();
        shuffled.schools.reverse();
        shuffled.students.reverse();
        shuffled.guardians.reverse();
        shuffled.links.reverse();
        assert_eq!(build(&shuffled).unwrap(), first);
    }

    #[test]
    fn a_student_at_an_unknown_school_is_an_error() {
        let mut snapshot = snapshot();
        snapshot.students[0].school = "XX99".into();
        let err = build(&snapshot).unwrap_err().to_string();
        assert!(err.contains("XX99") && err.contains("102"), "{err}");
    }

    #[test]
    fn grades_and_roles_map_to_oneroster_vocabularies() {
        assert_eq!(oneroster_grade("K"), "KG");
        assert_eq!(oneroster_grade("1"), "01");
        assert_eq!(oneroster_grade("12"), "12");
        assert_eq!(oneroster_grade("UG"), "UG");
        assert_eq!(
            GuardianRole::from_relationship("Stepmother"),
            GuardianRole::Parent
        );
        assert_eq!(
            GuardianRole::from_relationship("Grandmother"),
            GuardianRole::Relative
        );
        assert_eq!(
            GuardianRole::from_relationship("Guardian"),
            GuardianRole::Guardian
        );
        assert_eq!(
            GuardianRole::from_relationship("Neighbor"),
            GuardianRole::Guardian
        );
    }
}
