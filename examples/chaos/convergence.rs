//! Office actions across the whole life of a fee, injected in every
//! scenario (issue 13's cases): an amount edited A → B → A with a push in
//! between, a fee moved to another student with a new description and due
//! date, an unpaid or paid fee deleted, a fee waived without a waiver row,
//! an office refund (a Genesis credit below zero), an amount edited after a
//! Community Pass payment (Community Pass refuses the push: it is held),
//! guardian links added and removed, a payment on a fee that exists
//! only in Community Pass, and (a quarter of the time) the cutoff moved
//! later, freezing the sent fees dated before it. Half the time the pushes of these changes are
//! lost, so the nightly must find them. The finish then requires both sides
//! to agree fee by fee in every field (`checks::fees_agree_field_by_field`).

use diesel::connection::SimpleConnection;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use cpsync::scenario::SentFee;
use cpsync::sim::model::{FeeRef, ParentAction};

use crate::tally::ScenarioResult;
use crate::world::World;

/// The office actions injected into one scenario, at most one per fee.
const ACTIONS_MAX: usize = 8;
/// How often a scenario also moves the cutoff (freezing sent fees).
const POLICY_CHANGE_CHANCE: f64 = 0.25;

/// One office action on one fee (or its student).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OfficeAction {
    AmountThereAndBack,
    MoveToAnotherStudent,
    Delete,
    WaiveWithoutRow,
    OfficeRefund,
    EditAfterOnlinePayment,
    GuardianAdded,
    GuardianRemoved,
    PaymentOnCommunityPassOnlyFee,
}

const ACTIONS: [OfficeAction; 9] = [
    OfficeAction::AmountThereAndBack,
    OfficeAction::MoveToAnotherStudent,
    OfficeAction::Delete,
    OfficeAction::WaiveWithoutRow,
    OfficeAction::OfficeRefund,
    OfficeAction::EditAfterOnlinePayment,
    OfficeAction::GuardianAdded,
    OfficeAction::GuardianRemoved,
    OfficeAction::PaymentOnCommunityPassOnlyFee,
];

/// Injects office actions on `fees` (sent fees not used by other drift).
pub fn inject(
    world: &World,
    rng: &mut ChaCha8Rng,
    fees: &[SentFee],
    result: &mut ScenarioResult,
) -> anyhow::Result<()> {
    if fees.len() < 2 {
        return Ok(());
    }
    let mut conn = world.connect()?;
    let count = rng.gen_range(1..=ACTIONS_MAX.min(fees.len() - 1));
    for (index, fee) in fees.iter().take(count).enumerate() {
        let action = *ACTIONS.choose(rng).expect("actions are listed");
        let other = &fees[(index + 1) % fees.len()];
        let id = fee.fee_id.0;
        let sql = match action {
            OfficeAction::AmountThereAndBack => {
                conn.batch_execute(&format!(
                    "UPDATE student_fees SET amount_cents = amount_cents + 300 WHERE id = {id}"
                ))?;
                // A push of B (it may fail under faults; the finish sends A).
                world.engine.run(&["send-fees"])?;
                format!("UPDATE student_fees SET amount_cents = amount_cents - 300 WHERE id = {id}")
            }
            OfficeAction::MoveToAnotherStudent => format!(
                "UPDATE student_fees SET student_id = {}, description = 'Moved: ' || description, \
                 due_date = '2026-12-31' WHERE id = {id}",
                other.student_id.0
            ),
            OfficeAction::Delete => format!("DELETE FROM student_fees WHERE id = {id}"),
            OfficeAction::WaiveWithoutRow => {
                format!("UPDATE student_fees SET status = 'waived' WHERE id = {id}")
            }
            OfficeAction::OfficeRefund => format!(
                "INSERT INTO fee_transactions (fee_id, kind, amount_cents, method, source, posted_at, note) \
                 VALUES ({id}, 'refund', {}, 'check', 'genesis', '2026-11-22 10:00:00', 'Refunded at the office')",
                (fee.amount.cents() / 4).max(1)
            ),
            OfficeAction::EditAfterOnlinePayment => {
                world
                    .admin
                    .pay(fee.fee_id, Some(cpsync::money::Money::from_cents(100)))?;
                format!("UPDATE student_fees SET amount_cents = amount_cents + 700 WHERE id = {id}")
            }
            OfficeAction::GuardianAdded => format!(
                "INSERT INTO student_guardians (student_id, guardian_id, relationship, household, portal_access, billing_contact) \
                 SELECT {}, g.id, 'Relative', 2, TRUE, FALSE FROM guardians g \
                 WHERE NOT EXISTS (SELECT 1 FROM student_guardians sg WHERE sg.student_id = {} AND sg.guardian_id = g.id) \
                 ORDER BY g.id LIMIT 1",
                fee.student_id.0, fee.student_id.0
            ),
            // Never the district's first or last guardian: their rows carry
            // the hostile text `hostile.rs` expects in the export.
            OfficeAction::GuardianRemoved => format!(
                "DELETE FROM student_guardians WHERE student_id = {0} AND guardian_id = \
                 (SELECT MAX(guardian_id) FROM student_guardians WHERE student_id = {0} \
                  AND guardian_id NOT IN (SELECT MIN(id) FROM guardians) \
                  AND guardian_id NOT IN (SELECT MAX(id) FROM guardians))",
                fee.student_id.0
            ),
            OfficeAction::PaymentOnCommunityPassOnlyFee => {
                let unmanaged = world.admin.duplicate(fee.fee_id)?;
                world.admin.act(vec![ParentAction::Payment {
                    fee: FeeRef::Vendor(unmanaged.vendor_fee_id),
                    amount: None,
                    method: None,
                    occurred_at: None,
                }])?;
                result.unmanaged_injected += 1;
                result.office_actions += 1;
                continue;
            }
        };
        conn.batch_execute(&sql)?;
        result.office_actions += 1;
    }
    if rng.gen_bool(POLICY_CHANGE_CHANCE) {
        // The district moves its cutoff later: fees already sent
        // and now before it are frozen, never pushed again; the nightly
        // must stay quiet about those both sides agree on.
        let cutoff = if rng.gen_bool(0.5) {
            "2026-10-15"
        } else {
            "2026-09-15"
        };
        let ended = world.engine.run(&["setup", "cutoff", cutoff])?;
        if !ended.succeeded() {
            result.violations.push(format!(
                "setup cutoff {cutoff} exited {:?}: {}",
                ended.code, ended.stderr
            ));
        }
        result.office_actions += 1;
    }
    if rng.gen_bool(0.5) {
        // The pushes of these changes are lost: only the nightly finds them.
        conn.batch_execute(
            "UPDATE cp_outbox SET processed_at = enqueued_at WHERE processed_at IS NULL",
        )?;
    }
    Ok(())
}
