"""The six deliberate bugs of issue 15's mutation check, applied one at a
time by scripts/mutation-check to a scratch copy of the source. Each must
make at least one test fail. A patch that no longer applies (the code
moved) fails loudly: update the patch with the code."""
import sys


def patch(path, old, new):
    text = open(path).read()
    if old not in text:
        sys.exit(f"mutation does not apply any more: {path}: {old[:60]!r}")
    open(path, "w").write(text.replace(old, new, 1))


MUTATIONS = {
    "1": ("the collector keeps the second of two conflicting copies", lambda: patch(
        "src/portal/mod.rs",
        """            if !copies.is_empty() {
                self.conflicting_copies += 1;
            }
            copies.push(self.items.len());
            self.items.push(txn);
        }
        self.next_after = page.next_after;""",
        """            if let Some(first) = copies.first().copied() {
                self.items[first] = txn;
                continue;
            }
            copies.push(self.items.len());
            self.items.push(txn);
        }
        self.next_after = page.next_after;""")),
    "2": ("send-fees ignores a description change", lambda: patch(
        "src/portal/mod.rs",
        """    hasher.update(canonical_body(fee));
    hex(&hasher.finalize())""",
        """    let mut fee = fee.clone();
    fee.description = String::new();
    hasher.update(canonical_body(&fee));
    hex(&hasher.finalize())""")),
    "3": ("a posting goes to the fee's neighbour", lambda: patch(
        "src/db/postings.rs",
        "        fee_id: fee_id.0,\n        kind: txn.kind.as_str(),",
        "        fee_id: fee_id.0 + 1,\n        kind: txn.kind.as_str(),")),
    "4": ("a refund is posted as a payment", lambda: patch(
        "src/db/postings.rs",
        "        fee_id: fee_id.0,\n        kind: txn.kind.as_str(),",
        "        fee_id: fee_id.0,\n        kind: if txn.kind == crate::domain::TxnKind::Refund { \"payment\" } else { txn.kind.as_str() },")),
    "5": ("the nightly reports corrected without re-reading", lambda: patch(
        "src/sync/nightly.rs",
        "        let verified = verify_touched(conn, portal, &vendor, &touched, setup, &options.scope)?;",
        "        let _ = (&touched, &vendor);\n        let verified = Verified::default();")),
    "6": ("a held record is deleted instead of held", lambda: patch(
        "src/db/postings.rs",
        """    for (txn, reason) in parked {
        let payload""",
        """    for (txn, reason) in parked {
        let _ = (reason, run_id, now);
        diesel::delete(cp_unprocessed::table.find(&txn.id.0)).execute(conn)?;
        if txn.amount.cents() != i64::MIN {
            continue;
        }
        let payload""")),
}

if __name__ == "__main__":
    which = sys.argv[1]
    if which == "describe":
        print(MUTATIONS[sys.argv[2]][0])
    else:
        MUTATIONS[which][1]()
