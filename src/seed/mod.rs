//! The sample district: a realistic, reproducible Genesis data set (schools,
//! families with siblings and two-household students, fee categories, a
//! school year of fees, office payments, waivers and voids). `generate` is
//! pure and deterministic per seed; `store` writes it in one transaction.

mod names;

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::db::genesis::{self, GenesisCounts};
use crate::db::{DbConnection, DbError};
use crate::domain::{
    FeeCategory, FeeId, FeeStatus, GenesisFee, Guardian, GuardianId, GuardianLink, NewGenesisTxn,
    School, Student, StudentId, StudentStatus, TxnKind, TxnSource,
};
use crate::money::Money;

/// The largest district `generate` will build.
pub const STUDENTS_MAX: usize = 2_000_000;
/// First student id; Genesis student ids are six or seven digits.
pub const FIRST_STUDENT_ID: i64 = 100_001;
/// First guardian id.
pub const FIRST_GUARDIAN_ID: i64 = 5_000_001;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOptions {
    pub students: usize,
    pub seed: u64,
}

/// A whole sample district, ready to store.
#[derive(Debug, Clone, Default)]
pub struct SampleDistrict {
    pub schools: Vec<School>,
    pub categories: Vec<FeeCategory>,
    pub students: Vec<Student>,
    pub guardians: Vec<Guardian>,
    pub links: Vec<GuardianLink>,
    pub fees: Vec<GenesisFee>,
    pub txns: Vec<NewGenesisTxn>,
}

/// The grade bands and how many grades each spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Band {
    Elementary,
    Middle,
    High,
}

const GRADES: &[(&str, Band)] = &[
    ("K", Band::Elementary),
    ("01", Band::Elementary),
    ("02", Band::Elementary),
    ("03", Band::Elementary),
    ("04", Band::Elementary),
    ("05", Band::Elementary),
    ("06", Band::Middle),
    ("07", Band::Middle),
    ("08", Band::Middle),
    ("09", Band::High),
    ("10", Band::High),
    ("11", Band::High),
    ("12", Band::High),
];

/// The FEE_CATEGORY codes with their descriptions and default amounts (cents).
const CATEGORIES: &[(&str, &str, i64)] = &[
    ("ATHLETIC", "Athletic participation fee", 15_000),
    ("AP_EXAM", "Advanced Placement exam fee", 9_900),
    ("BUS", "Courtesy busing", 35_000),
    ("CAFE", "Cafeteria charge", 325),
    ("CLUB", "Club dues", 3_000),
    ("FIELD_TRIP", "Field trip", 2_500),
    ("GRADUATION", "Senior dues and graduation", 7_500),
    ("INSTRUMENT", "Instrument rental", 7_500),
    ("LAB", "Science lab fee", 3_500),
    ("LIBRARY", "Lost or damaged library book", 1_800),
    ("PARKING", "Student parking permit", 10_000),
    ("TECH", "Chromebook insurance", 2_500),
    ("YEARBOOK", "Yearbook", 7_500),
];

/// The school year the fees fall in, and the earlier one some old fees come from.
const YEAR_START: (i32, u32, u32) = (2026, 8, 24);
const YEAR_DAYS: i64 = 92;
const PRIOR_YEAR_START: (i32, u32, u32) = (2025, 9, 2);
const PRIOR_YEAR_DAYS: i64 = 280;

fn date(ymd: (i32, u32, u32)) -> NaiveDate {
    NaiveDate::from_ymd_opt(ymd.0, ymd.1, ymd.2).expect("constant dates are valid")
}

fn at(day: NaiveDate, minutes_after_seven: i64) -> NaiveDateTime {
    day.and_time(NaiveTime::from_hms_opt(7, 0, 0).expect("7:00 is valid"))
        + Duration::minutes(minutes_after_seven)
}

/// Builds the district for `options`. Same options, same district, always.
pub fn generate(options: SeedOptions) -> SampleDistrict {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut district = SampleDistrict {
        schools: schools_for(options.students),
        categories: categories(),
        ..SampleDistrict::default()
    };
    while district.students.len() < options.students {
        let remaining = options.students - district.students.len();
        add_family(&mut rng, &mut district, remaining);
    }
    let student_count = district.students.len();
    for index in 0..student_count {
        add_fees_for_student(&mut rng, &mut district, index);
    }
    district
}

fn categories() -> Vec<FeeCategory> {
    CATEGORIES
        .iter()
        .map(|(code, description, cents)| FeeCategory {
            code: code.to_string(),
            description: description.to_string(),
            default_amount: Money::from_cents(*cents),
        })
        .collect()
}

/// Enough elementary, middle and high schools for the enrolment.
fn schools_for(students: usize) -> Vec<School> {
    let per_grade = students.div_ceil(GRADES.len()).max(1);
    let bands = [
        (
            Band::Elementary,
            "ES",
            "Elementary School",
            "K",
            "05",
            6,
            450,
        ),
        (Band::Middle, "MS", "Middle School", "06", "08", 3, 750),
        (Band::High, "HS", "High School", "09", "12", 4, 1_400),
    ];
    let mut schools = Vec::new();
    let mut name_index = 0;
    for (_, prefix, suffix, low, high, grades, size) in bands {
        let count = (per_grade * grades).div_ceil(size).max(1);
        for n in 1..=count {
            let base = names::SCHOOL_NAMES[name_index % names::SCHOOL_NAMES.len()];
            let round = name_index / names::SCHOOL_NAMES.len();
            name_index += 1;
            let name = if round == 0 {
                format!("{base} {suffix}")
            } else {
                format!("{base} {suffix} {}", round + 1)
            };
            schools.push(School {
                code: format!("{prefix}{n:02}"),
                name,
                low_grade: low.to_string(),
                high_grade: high.to_string(),
            });
        }
    }
    schools
}

fn school_codes(district: &SampleDistrict, band: Band) -> Vec<&str> {
    let prefix = match band {
        Band::Elementary => "ES",
        Band::Middle => "MS",
        Band::High => "HS",
    };
    district
        .schools
        .iter()
        .filter(|s| s.code.starts_with(prefix))
        .map(|s| s.code.as_str())
        .collect()
}

fn pick<'a>(rng: &mut ChaCha8Rng, items: &[&'a str]) -> &'a str {
    items
        .choose(rng)
        .copied()
        .expect("word lists are not empty")
}

/// Adds one family: 1–3 children sharing guardians; some families have a
/// second household (the children's other parent) with its own guardian.
fn add_family(rng: &mut ChaCha8Rng, district: &mut SampleDistrict, remaining: usize) {
    let family_name = pick(rng, names::LAST_NAMES);
    let wanted_children = match rng.gen_range(0..100) {
        0..=49 => 1,
        50..=84 => 2,
        _ => 3,
    };
    let children = wanted_children.min(remaining);
    let mut household_one = vec![new_guardian(rng, district, family_name, true)];
    if rng.gen_bool(0.8) {
        household_one.push(new_guardian(rng, district, family_name, false));
    }
    let household_two = if rng.gen_bool(0.15) {
        let other_name = pick(rng, names::LAST_NAMES);
        let mother = rng.gen_bool(0.5);
        vec![new_guardian(rng, district, other_name, mother)]
    } else {
        Vec::new()
    };
    for _ in 0..children {
        let student_id = new_student(rng, district, family_name);
        for (position, (guardian_id, relationship)) in household_one.iter().enumerate() {
            district.links.push(GuardianLink {
                student_id,
                guardian_id: *guardian_id,
                relationship: relationship.clone(),
                household: 1,
                portal_access: true,
                billing_contact: position == 0,
            });
        }
        for (guardian_id, relationship) in &household_two {
            district.links.push(GuardianLink {
                student_id,
                guardian_id: *guardian_id,
                relationship: relationship.clone(),
                household: 2,
                portal_access: rng.gen_bool(0.9),
                billing_contact: false,
            });
        }
    }
}

/// Adds a guardian; returns its id and relationship to the family's children.
fn new_guardian(
    rng: &mut ChaCha8Rng,
    district: &mut SampleDistrict,
    last_name: &str,
    mother: bool,
) -> (GuardianId, String) {
    let id = GuardianId(FIRST_GUARDIAN_ID + district.guardians.len() as i64);
    let first_name = if mother {
        pick(rng, names::FIRST_NAMES_GIRLS)
    } else {
        pick(rng, names::FIRST_NAMES_BOYS)
    };
    let relationship = if rng.gen_bool(0.9) {
        names::RELATIONSHIPS_FIRST[usize::from(!mother)].to_string()
    } else {
        pick(rng, names::RELATIONSHIPS_OTHER).to_string()
    };
    let handle = format!(
        "{}.{}{}",
        first_name.to_lowercase(),
        last_name.to_lowercase().replace('\'', ""),
        id.0 - FIRST_GUARDIAN_ID + 1
    );
    let has_portal = rng.gen_bool(0.85);
    district.guardians.push(Guardian {
        id,
        first_name: first_name.to_string(),
        last_name: last_name.to_string(),
        email: Some(format!("{handle}@example.com")),
        phone: Some(format!(
            "555-{:03}-{:04}",
            rng.gen_range(200..999),
            rng.gen_range(0..10_000)
        )),
        portal_username: has_portal.then(|| handle.clone()),
    });
    (id, relationship)
}

fn new_student(rng: &mut ChaCha8Rng, district: &mut SampleDistrict, last_name: &str) -> StudentId {
    let id = StudentId(FIRST_STUDENT_ID + district.students.len() as i64);
    let grade_index = rng.gen_range(0..GRADES.len());
    let (grade, band) = GRADES[grade_index];
    let schools = school_codes(district, band);
    let school = pick(rng, &schools).to_string();
    let girl = rng.gen_bool(0.5);
    let first_name = if girl {
        pick(rng, names::FIRST_NAMES_GIRLS)
    } else {
        pick(rng, names::FIRST_NAMES_BOYS)
    };
    // A kindergartner in 2026-27 was born between Sept 2020 and Aug 2021.
    let birth_year_start = date((2020 - grade_index as i32, 9, 1));
    let birth_date = birth_year_start + Duration::days(rng.gen_range(0..365));
    let status = if rng.gen_bool(0.02) {
        StudentStatus::Withdrawn
    } else {
        StudentStatus::Active
    };
    district.students.push(Student {
        id,
        first_name: first_name.to_string(),
        last_name: last_name.to_string(),
        grade: grade.to_string(),
        school,
        status,
        birth_date,
        email: Some(format!("s{}@students.example.org", id.0)),
    });
    id
}

/// One fee the student is charged, before dates and Genesis activity.
struct FeeDraft {
    category: &'static str,
    description: String,
    amount_cents: i64,
}

fn fee_drafts(rng: &mut ChaCha8Rng, grade: &str) -> Vec<FeeDraft> {
    let band = GRADES
        .iter()
        .find(|(g, _)| *g == grade)
        .map(|(_, b)| *b)
        .unwrap_or(Band::Elementary);
    let mut drafts = Vec::new();
    let mut add = |category: &'static str, description: String, amount_cents: i64| {
        drafts.push(FeeDraft {
            category,
            description,
            amount_cents,
        })
    };
    let meals = rng.gen_range(0..=11);
    for _ in 0..meals {
        let cents = [275, 295, 325, 350, 410][rng.gen_range(0..5)];
        add("CAFE", "Cafeteria charge".to_string(), cents);
    }
    if rng.gen_bool(0.6) {
        add("TECH", "Chromebook insurance 2026-27".to_string(), 2_500);
    }
    for _ in 0..rng.gen_range(0..=3) {
        let trip = pick(rng, names::FIELD_TRIPS);
        add(
            "FIELD_TRIP",
            format!("Field trip: {trip}"),
            rng.gen_range(6..=18) * 250,
        );
    }
    if rng.gen_bool(0.15) {
        let book = pick(rng, names::LIBRARY_BOOKS);
        add(
            "LIBRARY",
            format!("Lost library book: {book}"),
            rng.gen_range(8..=30) * 100,
        );
    }
    if rng.gen_bool(0.08) {
        add("BUS", "Courtesy busing 2026-27".to_string(), 35_000);
    }
    if band != Band::Elementary {
        add_secondary_fees(rng, band, grade, &mut add);
    }
    drafts
}

fn add_secondary_fees(
    rng: &mut ChaCha8Rng,
    band: Band,
    grade: &str,
    add: &mut impl FnMut(&'static str, String, i64),
) {
    for _ in 0..rng.gen_range(0..=2) {
        if rng.gen_bool(0.45) {
            let sport = pick(rng, names::SPORTS);
            add(
                "ATHLETIC",
                format!("{sport} participation fee"),
                [15_000, 17_500, 22_500][rng.gen_range(0..3)],
            );
        }
    }
    if rng.gen_bool(0.25) {
        let club = pick(rng, names::CLUBS);
        add("CLUB", format!("{club} dues"), rng.gen_range(4..=12) * 500);
    }
    if rng.gen_bool(0.15) {
        let instrument = pick(rng, names::INSTRUMENTS);
        add(
            "INSTRUMENT",
            format!("Instrument rental: {instrument}"),
            7_500,
        );
    }
    if rng.gen_bool(0.4) {
        add(
            "YEARBOOK",
            "Yearbook 2027".to_string(),
            [6_500, 7_500, 8_500][rng.gen_range(0..3)],
        );
    }
    if band == Band::High {
        if rng.gen_bool(0.5) {
            add(
                "LAB",
                "Science lab fee".to_string(),
                [2_500, 3_500, 4_000][rng.gen_range(0..3)],
            );
        }
        if (grade == "11" || grade == "12") && rng.gen_bool(0.4) {
            add(
                "PARKING",
                "Student parking permit 2026-27".to_string(),
                10_000,
            );
        }
        if grade >= "10" {
            for _ in 0..rng.gen_range(0..=2) {
                let exam = pick(rng, names::AP_EXAMS);
                add("AP_EXAM", format!("AP {exam} exam"), 9_900);
            }
        }
        if grade == "12" && rng.gen_bool(0.9) {
            add(
                "GRADUATION",
                "Senior dues and graduation".to_string(),
                rng.gen_range(9..=15) * 500,
            );
        }
    }
}

fn add_fees_for_student(rng: &mut ChaCha8Rng, district: &mut SampleDistrict, index: usize) {
    let student_id = district.students[index].id;
    let school = district.students[index].school.clone();
    let drafts = fee_drafts(rng, &district.students[index].grade);
    for draft in drafts {
        let fee_id = FeeId(district.fees.len() as i64 + 1);
        let prior_year = rng.gen_bool(0.1);
        let (start, days) = if prior_year {
            (date(PRIOR_YEAR_START), PRIOR_YEAR_DAYS)
        } else {
            (date(YEAR_START), YEAR_DAYS)
        };
        let fee_date = start + Duration::days(rng.gen_range(0..days));
        let created_at = at(fee_date, rng.gen_range(0..600));
        let due_date = (draft.category != "CAFE").then(|| fee_date + Duration::days(30));
        let mut fee = GenesisFee {
            id: fee_id,
            student_id,
            category: draft.category.to_string(),
            school: school.clone(),
            description: draft.description,
            amount: Money::from_cents(draft.amount_cents),
            fee_date,
            due_date,
            status: FeeStatus::Open,
            created_at,
            modified_at: created_at,
        };
        add_office_activity(rng, &mut fee, &mut district.txns);
        district.fees.push(fee);
    }
}

/// What the school office does in Genesis itself: waivers, voids, and
/// payments taken at the counter (cash, check), some partial, a few refunded.
fn add_office_activity(rng: &mut ChaCha8Rng, fee: &mut GenesisFee, txns: &mut Vec<NewGenesisTxn>) {
    let roll = rng.gen_range(0..1000);
    let later = |rng: &mut ChaCha8Rng, fee: &GenesisFee| {
        fee.created_at
            + Duration::days(rng.gen_range(1..20))
            + Duration::minutes(rng.gen_range(0..480))
    };
    let office_txn = |kind, amount, method: &str, posted_at, note: &str| NewGenesisTxn {
        fee_id: fee.id,
        kind,
        amount,
        method: method.to_string(),
        source: TxnSource::Genesis,
        vendor_txn_id: None,
        posted_at,
        note: Some(note.to_string()),
    };
    match roll {
        0..=29 => {
            let posted_at = later(rng, fee);
            txns.push(office_txn(
                TxnKind::Waiver,
                fee.amount,
                "waiver",
                posted_at,
                "Fee waived by principal",
            ));
            fee.status = FeeStatus::Waived;
            fee.modified_at = posted_at;
        }
        30..=44 => {
            fee.status = FeeStatus::Void;
            fee.modified_at = later(rng, fee);
        }
        45..=144 => {
            let method = if rng.gen_bool(0.6) { "cash" } else { "check" };
            let partial = rng.gen_bool(0.3) && fee.amount.cents() >= 1_000;
            let amount = if partial {
                Money::from_cents(fee.amount.cents() / 2)
            } else {
                fee.amount
            };
            let posted_at = later(rng, fee);
            txns.push(office_txn(
                TxnKind::Payment,
                amount,
                method,
                posted_at,
                "Paid at school office",
            ));
            if rng.gen_bool(0.05) {
                let refunded_at = posted_at + Duration::days(rng.gen_range(1..10));
                txns.push(office_txn(
                    TxnKind::Refund,
                    amount,
                    method,
                    refunded_at,
                    "Refunded at school office",
                ));
            }
        }
        _ => {}
    }
}

/// Writes the district into an empty Genesis database in one transaction.
pub fn store(conn: &mut DbConnection, district: &SampleDistrict) -> Result<GenesisCounts, DbError> {
    use diesel::Connection;
    conn.transaction(|conn| {
        genesis::insert_schools(conn, &district.schools)?;
        genesis::insert_fee_categories(conn, &district.categories)?;
        genesis::insert_students(conn, &district.students)?;
        genesis::insert_guardians(conn, &district.guardians)?;
        genesis::insert_guardian_links(conn, &district.links)?;
        genesis::insert_fees(conn, &district.fees)?;
        genesis::insert_txns(conn, &district.txns)?;
        genesis::counts(conn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_district() {
        let a = generate(SeedOptions {
            students: 300,
            seed: 7,
        });
        let b = generate(SeedOptions {
            students: 300,
            seed: 7,
        });
        assert_eq!(a.students, b.students);
        assert_eq!(a.fees, b.fees);
        assert_eq!(a.txns, b.txns);
        let c = generate(SeedOptions {
            students: 300,
            seed: 8,
        });
        assert_ne!(a.fees, c.fees);
    }

    #[test]
    fn district_has_the_shapes_the_rules_need() {
        let d = generate(SeedOptions {
            students: 2_000,
            seed: 1,
        });
        assert_eq!(d.students.len(), 2_000);
        assert!(d.links.iter().any(|l| l.household == 2), "two households");
        let guardians_with_many = d
            .links
            .iter()
            .fold(std::collections::HashMap::new(), |mut m, l| {
                *m.entry(l.guardian_id).or_insert(0) += 1;
                m
            })
            .values()
            .filter(|n| **n > 1)
            .count();
        assert!(guardians_with_many > 0, "siblings share guardians");
        assert!(d
            .students
            .iter()
            .any(|s| s.status == StudentStatus::Withdrawn));
        for status in FeeStatus::ALL {
            assert!(d.fees.iter().any(|f| f.status == *status), "{status}");
        }
        for category in &d.categories {
            assert!(
                d.fees.iter().any(|f| f.category == category.code),
                "{}",
                category.code
            );
        }
        assert!(d.txns.iter().any(|t| t.kind == TxnKind::Refund));
        let per_student = d.fees.len() as f64 / d.students.len() as f64;
        assert!(
            (7.0..14.0).contains(&per_student),
            "{per_student} fees per student"
        );
    }

    #[test]
    fn office_payments_never_exceed_the_fee() {
        let d = generate(SeedOptions {
            students: 1_000,
            seed: 3,
        });
        let amount: std::collections::HashMap<FeeId, Money> =
            d.fees.iter().map(|f| (f.id, f.amount)).collect();
        for t in d.txns.iter().filter(|t| t.kind == TxnKind::Payment) {
            assert!(t.amount <= amount[&t.fee_id]);
            assert!(t.amount.is_positive());
        }
    }
}
