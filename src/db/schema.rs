//! Diesel table definitions for both sides, written by hand to match
//! `migrations/` (identical on SQLite and PostgreSQL). Genesis tables first,
//! then the integration's own `cp_` tables.

// ---- Genesis (the contract the engine reads) ----

diesel::table! {
    schools (code) {
        code -> Text,
        name -> Text,
        low_grade -> Text,
        high_grade -> Text,
    }
}

diesel::table! {
    students (id) {
        id -> BigInt,
        first_name -> Text,
        last_name -> Text,
        grade -> Text,
        school_code -> Text,
        status -> Text,
        birth_date -> Date,
        email -> Nullable<Text>,
    }
}

diesel::table! {
    guardians (id) {
        id -> BigInt,
        first_name -> Text,
        last_name -> Text,
        email -> Nullable<Text>,
        phone -> Nullable<Text>,
        portal_username -> Nullable<Text>,
    }
}

diesel::table! {
    student_guardians (student_id, guardian_id) {
        student_id -> BigInt,
        guardian_id -> BigInt,
        relationship -> Text,
        household -> Integer,
        portal_access -> Bool,
        billing_contact -> Bool,
    }
}

diesel::table! {
    fee_categories (code) {
        code -> Text,
        description -> Text,
        default_amount_cents -> BigInt,
    }
}

diesel::table! {
    student_fees (id) {
        id -> BigInt,
        student_id -> BigInt,
        category_code -> Text,
        school_code -> Text,
        description -> Text,
        amount_cents -> BigInt,
        fee_date -> Date,
        due_date -> Nullable<Date>,
        status -> Text,
        created_at -> Timestamp,
        modified_at -> Timestamp,
    }
}

diesel::table! {
    fee_transactions (id) {
        id -> BigInt,
        fee_id -> BigInt,
        kind -> Text,
        amount_cents -> BigInt,
        method -> Text,
        source -> Text,
        vendor_txn_id -> Nullable<Text>,
        posted_at -> Timestamp,
        note -> Nullable<Text>,
    }
}

// ---- The integration's own tables ----

diesel::table! {
    cp_settings (key) {
        key -> Text,
        value -> Text,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    cp_tasks (name) {
        name -> Text,
        enabled -> Bool,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    cp_runs (id) {
        id -> BigInt,
        task -> Text,
        trigger -> Text,
        started_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        status -> Text,
        dry_run -> Bool,
        records_in -> BigInt,
        matched -> BigInt,
        corrected -> BigInt,
        needs_review -> BigInt,
        summary_json -> Nullable<Text>,
        error -> Nullable<Text>,
        pid -> Nullable<BigInt>,
        host -> Nullable<Text>,
    }
}

diesel::table! {
    cp_fee_links (fee_id) {
        fee_id -> BigInt,
        vendor_fee_id -> Nullable<Text>,
        first_sent_at -> Nullable<Timestamp>,
        last_pushed_at -> Nullable<Timestamp>,
        pushed_amount_cents -> Nullable<BigInt>,
        pushed_status -> Nullable<Text>,
        pushed_credit_cents -> Nullable<BigInt>,
        last_idempotency_key -> Nullable<Text>,
        amount_locked -> Bool,
        locked_at -> Nullable<Timestamp>,
        locked_by_vendor_txn -> Nullable<Text>,
        last_run_id -> Nullable<BigInt>,
        intent_seq -> BigInt,
        intent_digest -> Nullable<Text>,
        pushed_digest -> Nullable<Text>,
        pushed_revision -> Nullable<BigInt>,
        refused_digest -> Nullable<Text>,
        refused_reason -> Nullable<Text>,
        refused_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    cp_outbox (id) {
        id -> BigInt,
        fee_id -> BigInt,
        reason -> Text,
        enqueued_at -> Timestamp,
        processed_at -> Nullable<Timestamp>,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        run_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    cp_cursors (name) {
        name -> Text,
        position -> BigInt,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    cp_balances (patron_id) {
        patron_id -> Text,
        balance_cents -> BigInt,
        integration_balance_cents -> BigInt,
        other_balance_cents -> BigInt,
        as_of -> Timestamp,
        run_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    cp_discrepancies (id) {
        id -> BigInt,
        run_id -> BigInt,
        kind -> Text,
        fee_id -> Nullable<BigInt>,
        student_id -> Nullable<BigInt>,
        vendor_txn_id -> Nullable<Text>,
        genesis_value -> Nullable<Text>,
        cp_value -> Nullable<Text>,
        resolution -> Text,
        action -> Nullable<Text>,
        reason -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    cp_review_items (id) {
        id -> BigInt,
        item_key -> Text,
        kind -> Text,
        fee_id -> Nullable<BigInt>,
        student_id -> Nullable<BigInt>,
        vendor_txn_id -> Nullable<Text>,
        state -> Text,
        at_stake_cents -> BigInt,
        reason -> Nullable<Text>,
        genesis_value -> Nullable<Text>,
        cp_value -> Nullable<Text>,
        first_seen_run -> BigInt,
        first_seen_at -> Timestamp,
        last_seen_run -> BigInt,
        last_seen_at -> Timestamp,
        acknowledged_by -> Nullable<Text>,
        acknowledged_at -> Nullable<Timestamp>,
        acknowledged_note -> Nullable<Text>,
        resolved_run -> Nullable<BigInt>,
        resolved_at -> Nullable<Timestamp>,
        resolved_by -> Nullable<Text>,
        resolved_note -> Nullable<Text>,
    }
}

diesel::table! {
    cp_audit_log (id) {
        id -> BigInt,
        run_id -> Nullable<BigInt>,
        at -> Timestamp,
        side -> Text,
        entity -> Text,
        entity_id -> Text,
        action -> Text,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    cp_unprocessed (vendor_txn_id) {
        vendor_txn_id -> Text,
        fee_id -> Nullable<BigInt>,
        student_id -> Nullable<BigInt>,
        kind -> Text,
        amount_cents -> BigInt,
        occurred_at -> Timestamp,
        reason -> Text,
        payload -> Text,
        first_seen_at -> Timestamp,
        last_seen_at -> Timestamp,
        run_id -> Nullable<BigInt>,
        resolved_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    cp_locks (name) {
        name -> Text,
        holder -> Text,
        pid -> BigInt,
        run_id -> Nullable<BigInt>,
        acquired_at -> Timestamp,
    }
}

diesel::table! {
    cp_report_mail (id) {
        id -> BigInt,
        run_id -> BigInt,
        recipients -> Text,
        transport -> Text,
        status -> Text,
        message_id -> Text,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    cp_nightly_marks (run_id) {
        run_id -> BigInt,
        coverage -> Text,
        outbox_id -> BigInt,
        outbox_gaps -> Text,
        vendor_as_of -> Timestamp,
        txn_sequence -> BigInt,
        policy_fingerprint -> Text,
        full_run_id -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    cp_run_reports (run_id) {
        run_id -> BigInt,
        report_json -> Text,
        stored_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    schools,
    students,
    guardians,
    student_guardians,
    fee_categories,
    student_fees,
    fee_transactions,
    cp_settings,
    cp_tasks,
    cp_runs,
    cp_fee_links,
    cp_outbox,
    cp_cursors,
    cp_balances,
    cp_discrepancies,
    cp_review_items,
    cp_audit_log,
    cp_unprocessed,
    cp_locks,
    cp_report_mail,
    cp_nightly_marks,
    cp_run_reports,
);
