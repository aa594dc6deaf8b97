//! Setup: the district's integration choices and the order the handbook
//! requires (API key → categories → Test Pull and Test Push → cutoff date).
//! Pure: `SetupState` is read from and written to `cp_settings` by
//! `db::settings`; this module only decides what is allowed.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};

pub use crate::reconcile::CategorySelection;
use crate::reconcile::Policy;

/// What identifies the patron (the account holder) in Community Pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PatronIdRule {
    /// The Genesis student id (one account per student; the default).
    #[default]
    StudentId,
    /// The id of the student's billing-contact guardian in household 1
    /// (one account per family).
    BillingGuardianId,
}

impl PatronIdRule {
    pub fn as_str(self) -> &'static str {
        match self {
            PatronIdRule::StudentId => "student_id",
            PatronIdRule::BillingGuardianId => "billing_guardian_id",
        }
    }
}

/// The parent portal options (what a parent sees on the fees page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalOptions {
    /// The vendor's payment page.
    pub vendor_url: Option<String>,
    /// The text of the link to it.
    pub link_text: String,
    /// Show the Community Pass balance (from Get Balances).
    pub show_balance: bool,
    /// Lock the portal on an outstanding Community Pass balance, as if it
    /// were a Genesis fee.
    pub lock_out_on_balance: bool,
    /// Shown beside the Community Pass balance.
    pub balance_message: String,
    /// Shown on top of the fees page.
    pub payment_message: String,
    /// Genesis's grace setting: access stays open while the due dates of the
    /// outstanding fines have not passed.
    pub grace_until_due: bool,
}

impl Default for PortalOptions {
    fn default() -> Self {
        PortalOptions {
            vendor_url: None,
            link_text: "Pay fees online with Community Pass".to_string(),
            show_balance: true,
            lock_out_on_balance: false,
            balance_message: "Your Community Pass account balance".to_string(),
            payment_message: String::new(),
            grace_until_due: true,
        }
    }
}

/// Everything setup has recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SetupState {
    /// The fingerprint (`sha256:` and 12 hex digits) of the API key setup
    /// last checked against Community Pass. The key itself is never
    /// stored: it is read from its file or environment variable at run time
    /// and must match this.
    pub api_key_fingerprint: Option<String>,
    pub api_key_set_at: Option<NaiveDateTime>,
    /// The Community Pass district that key's check answered for.
    #[serde(default)]
    pub api_key_district: Option<String>,
    pub categories: CategorySelection,
    pub categories_confirmed_at: Option<NaiveDateTime>,
    pub excluded_schools: BTreeSet<String>,
    pub patron_id: PatronIdRule,
    pub test_pull_at: Option<NaiveDateTime>,
    pub test_push_at: Option<NaiveDateTime>,
    pub cutoff: Option<NaiveDate>,
    pub portal: PortalOptions,
}

/// What recording a checked API key was, compared with the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// No key was recorded before.
    First,
    /// The key recorded before, checked again.
    Same,
    /// A new key of the district recorded before: connection tests kept.
    Rotated,
    /// A new key, and the district differs or was never recorded
    /// (a key recorded by an older cpsync): connection tests needed again.
    OtherDistrict,
}

impl KeyChange {
    /// Whether Test Pull and Test Push must be run again.
    pub fn needs_connection_tests(self) -> bool {
        matches!(self, KeyChange::First | KeyChange::OtherDistrict)
    }
}

/// The ordered setup steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetupStep {
    ApiKey,
    Categories,
    TestPull,
    TestPush,
    Cutoff,
}

impl fmt::Display for SetupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetupStep::ApiKey => "the API key (cpsync setup api-key)",
            SetupStep::Categories => "the fee categories (cpsync setup categories)",
            SetupStep::TestPull => "a successful Test Pull (cpsync setup test-pull)",
            SetupStep::TestPush => "a successful Test Push (cpsync setup test-push)",
            SetupStep::Cutoff => "the cutoff date (cpsync setup cutoff DATE)",
        })
    }
}

/// A step asked for before the steps it depends on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setup step refused: {step:?} needs {missing} first")]
pub struct OutOfOrder {
    pub step: SetupStep,
    pub missing: SetupStep,
}

impl SetupState {
    fn done(&self, step: SetupStep) -> bool {
        match step {
            SetupStep::ApiKey => self.api_key_fingerprint.is_some(),
            SetupStep::Categories => self.categories_confirmed_at.is_some(),
            SetupStep::TestPull => self.test_pull_at.is_some(),
            SetupStep::TestPush => self.test_push_at.is_some(),
            SetupStep::Cutoff => self.cutoff.is_some(),
        }
    }

    /// The steps `step` depends on, in order.
    fn prerequisites(step: SetupStep) -> &'static [SetupStep] {
        match step {
            SetupStep::ApiKey => &[],
            SetupStep::Categories => &[SetupStep::ApiKey],
            SetupStep::TestPull | SetupStep::TestPush => {
                &[SetupStep::ApiKey, SetupStep::Categories]
            }
            SetupStep::Cutoff => &[
                SetupStep::ApiKey,
                SetupStep::Categories,
                SetupStep::TestPull,
                SetupStep::TestPush,
            ],
        }
    }

    /// Whether `step` may be taken now; the error names the first missing step.
    pub fn allow(&self, step: SetupStep) -> Result<(), OutOfOrder> {
        match Self::prerequisites(step).iter().find(|p| !self.done(**p)) {
            Some(missing) => Err(OutOfOrder {
                step,
                missing: *missing,
            }),
            None => Ok(()),
        }
    }

    /// Fees may be sent only once every step is done.
    pub fn ready_to_send(&self) -> Result<(), OutOfOrder> {
        self.allow(SetupStep::Cutoff)?;
        if self.cutoff.is_none() {
            return Err(OutOfOrder {
                step: SetupStep::Cutoff,
                missing: SetupStep::Cutoff,
            });
        }
        Ok(())
    }

    /// The next step still to do, if any.
    pub fn next_step(&self) -> Option<SetupStep> {
        [
            SetupStep::ApiKey,
            SetupStep::Categories,
            SetupStep::TestPull,
            SetupStep::TestPush,
            SetupStep::Cutoff,
        ]
        .into_iter()
        .find(|s| !self.done(*s))
    }

    /// Records an API key `setup api-key` has just checked (a read-only
    /// call answered for `district`). The connection tests made before are
    /// kept for the same key, and for a rotated key of the same district
    /// (the check proved it reads that district; a rotation changes
    /// nothing else); a first key, or a key of another or unknown district,
    /// needs Test Pull and Test Push again.
    pub fn with_checked_api_key(
        mut self,
        fingerprint: String,
        district: String,
        at: NaiveDateTime,
    ) -> (SetupState, KeyChange) {
        let change = match (&self.api_key_fingerprint, &self.api_key_district) {
            (None, _) => KeyChange::First,
            (Some(old), _) if *old == fingerprint => KeyChange::Same,
            (Some(_), Some(old_district)) if *old_district == district => KeyChange::Rotated,
            (Some(_), _) => KeyChange::OtherDistrict,
        };
        if change != KeyChange::Same {
            self.api_key_set_at = Some(at);
        }
        if matches!(change, KeyChange::First | KeyChange::OtherDistrict) {
            self.test_pull_at = None;
            self.test_push_at = None;
        }
        self.api_key_fingerprint = Some(fingerprint);
        self.api_key_district = Some(district);
        (self, change)
    }

    /// The sending policy these choices make, for the reconciliation core
    /// and the outbox.
    pub fn policy(&self) -> Policy {
        Policy {
            cutoff: self.cutoff,
            categories: self.categories.clone(),
            excluded_schools: self.excluded_schools.clone(),
        }
    }
}

impl PatronIdRule {
    /// The Community Pass patron id of `student` under this rule, given the
    /// student's guardian links. Falls back to the student id when a family
    /// account is asked for but the student has no billing contact.
    pub fn patron_for(
        self,
        student: crate::domain::StudentId,
        links: &[crate::domain::GuardianLink],
    ) -> String {
        match self {
            PatronIdRule::StudentId => student.to_string(),
            PatronIdRule::BillingGuardianId => links
                .iter()
                .filter(|l| l.student_id == student && l.billing_contact)
                .min_by_key(|l| (l.household, l.guardian_id))
                .map(|l| format!("G{}", l.guardian_id))
                .unwrap_or_else(|| student.to_string()),
        }
    }

    /// The patron and the linked guardians (sorted, each once) of `student`
    /// under this rule: what every push of the student's fees carries.
    pub fn party_for(
        self,
        student: crate::domain::StudentId,
        links: &[crate::domain::GuardianLink],
    ) -> crate::reconcile::StudentParty {
        let mut guardian_ids: Vec<_> = links
            .iter()
            .filter(|l| l.student_id == student)
            .map(|l| l.guardian_id)
            .collect();
        guardian_ids.sort();
        guardian_ids.dedup();
        crate::reconcile::StudentParty {
            student_id: student,
            patron_id: self.patron_for(student, links),
            guardian_ids,
        }
    }

    /// The parties of every student with links or fees, from all links
    /// sorted by student (as `db::genesis::load_guardian_links` returns
    /// them) and the students with fees.
    pub fn parties(
        self,
        students: impl IntoIterator<Item = crate::domain::StudentId>,
        links: &[crate::domain::GuardianLink],
    ) -> Vec<crate::reconcile::StudentParty> {
        let mut by_student: std::collections::BTreeMap<_, Vec<crate::domain::GuardianLink>> =
            students.into_iter().map(|s| (s, Vec::new())).collect();
        for link in links {
            if let Some(list) = by_student.get_mut(&link.student_id) {
                list.push(link.clone());
            }
        }
        by_student
            .iter()
            .map(|(student, links)| self.party_for(*student, links))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2026, 8, 1)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap()
    }

    #[test]
    fn steps_are_refused_out_of_order() {
        let mut state = SetupState::default();
        assert_eq!(state.next_step(), Some(SetupStep::ApiKey));
        let err = state.allow(SetupStep::Cutoff).unwrap_err();
        assert_eq!(err.missing, SetupStep::ApiKey);
        assert!(err.to_string().contains("cpsync setup api-key"), "{err}");
        assert_eq!(
            state.allow(SetupStep::TestPull).unwrap_err().missing,
            SetupStep::ApiKey
        );

        state = state
            .with_checked_api_key("sha256:ab12".into(), "north".into(), at())
            .0;
        assert_eq!(
            state.allow(SetupStep::TestPull).unwrap_err().missing,
            SetupStep::Categories
        );
        state.categories_confirmed_at = Some(at());
        state.allow(SetupStep::TestPull).unwrap();
        state.test_pull_at = Some(at());
        assert_eq!(
            state.allow(SetupStep::Cutoff).unwrap_err().missing,
            SetupStep::TestPush
        );
        state.test_push_at = Some(at());
        state.allow(SetupStep::Cutoff).unwrap();
        assert!(state.ready_to_send().is_err(), "no cutoff yet");
        state.cutoff = NaiveDate::from_ymd_opt(2026, 7, 1);
        state.ready_to_send().unwrap();
        assert_eq!(state.next_step(), None);
    }

    #[test]
    fn a_rotated_key_of_the_same_district_keeps_the_connection_tests() {
        let (mut state, change) =
            SetupState::default().with_checked_api_key("sha256:a".into(), "north".into(), at());
        assert_eq!(change, KeyChange::First);
        state.categories_confirmed_at = Some(at());
        state.test_pull_at = Some(at());
        state.test_push_at = Some(at());
        let later = at() + chrono::Duration::days(30);

        let (same, change) =
            state
                .clone()
                .with_checked_api_key("sha256:a".into(), "north".into(), later);
        assert_eq!(change, KeyChange::Same);
        assert_eq!(
            same.api_key_set_at,
            Some(at()),
            "the same key keeps its date"
        );
        same.allow(SetupStep::Cutoff).unwrap();

        let (rotated, change) =
            state
                .clone()
                .with_checked_api_key("sha256:b".into(), "north".into(), later);
        assert_eq!(change, KeyChange::Rotated);
        assert!(!change.needs_connection_tests());
        assert_eq!(rotated.api_key_fingerprint.as_deref(), Some("sha256:b"));
        assert_eq!(rotated.api_key_set_at, Some(later));
        rotated.allow(SetupStep::Cutoff).unwrap();

        let (other, change) =
            state
                .clone()
                .with_checked_api_key("sha256:c".into(), "south".into(), later);
        assert_eq!(change, KeyChange::OtherDistrict);
        assert_eq!(
            other.allow(SetupStep::Cutoff).unwrap_err().missing,
            SetupStep::TestPull
        );

        let legacy = SetupState {
            api_key_district: None,
            ..state
        };
        let (upgraded, change) =
            legacy.with_checked_api_key("sha256:d".into(), "north".into(), later);
        assert_eq!(
            change,
            KeyChange::OtherDistrict,
            "an unknown district is not assumed"
        );
        assert!(upgraded.test_pull_at.is_none());
    }

    #[test]
    fn the_policy_carries_categories_schools_and_cutoff() {
        let state = SetupState {
            cutoff: NaiveDate::from_ymd_opt(2026, 9, 10),
            categories: CategorySelection::Only(["LAB".to_string()].into()),
            excluded_schools: ["HS01".to_string()].into(),
            ..SetupState::default()
        };
        let policy = state.policy();
        assert_eq!(policy.cutoff, state.cutoff);
        assert!(policy.categories.includes("LAB") && !policy.categories.includes("CAFE"));
        assert!(policy.excluded_schools.contains("HS01"));
    }
}
