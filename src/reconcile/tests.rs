//! Unit tests of the reconciliation rules, one per discrepancy kind.
