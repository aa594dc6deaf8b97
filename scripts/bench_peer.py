"""The peers of scripts/bench: the tools a data engineer would reach for to
compare the two sides' fees (genesis.csv and cp.csv, columns fee_id, amount,
balance, status), each timed on the same files.

Usage: bench_peer.py PEER GENESIS_CSV CP_CSV, PEER one of duckdb, polars,
datacompy. Prints one JSON object: load_compare_s (reading both CSVs and the
comparison), compare_s (the comparison alone, both sides already in memory),
differences (fees missing on one side or differing in a column; the bench
prints it so the peers can be seen to agree) and version.

The comparison is the same for every peer: a full outer join on fee_id, and
a fee counts as different when it is missing on one side or any of amount,
balance, status differs (as text, as written by the bench).
"""
import json
import sys
import time

COLUMNS = ("amount", "balance", "status")


def run_duckdb(genesis_path, cp_path):
    import duckdb

    started = time.perf_counter()
    con = duckdb.connect()
    for name, path in (("genesis", genesis_path), ("cp", cp_path)):
        con.execute(
            f"CREATE TABLE {name} AS SELECT * FROM read_csv(?, header = true, all_varchar = true)",
            [path],
        )
    loaded = time.perf_counter()
    differs = " OR ".join(f"g.{c} IS DISTINCT FROM c.{c}" for c in COLUMNS)
    differences = con.execute(
        "SELECT count(*) FROM genesis g FULL OUTER JOIN cp c ON g.fee_id = c.fee_id "
        f"WHERE g.fee_id IS NULL OR c.fee_id IS NULL OR {differs}"
    ).fetchone()[0]
    finished = time.perf_counter()
    return finished - started, finished - loaded, differences, duckdb.__version__


def run_polars(genesis_path, cp_path):
    import polars as pl

    started = time.perf_counter()
    genesis = pl.read_csv(genesis_path, infer_schema=False)
    cp = pl.read_csv(cp_path, infer_schema=False)
    loaded = time.perf_counter()
    joined = genesis.join(cp, on="fee_id", how="full", suffix="_cp")
    differs = pl.col("fee_id").is_null() | pl.col("fee_id_cp").is_null()
    for c in COLUMNS:
        differs = differs | pl.col(c).ne_missing(pl.col(f"{c}_cp"))
    differences = joined.filter(differs).height
    finished = time.perf_counter()
    return finished - started, finished - loaded, differences, pl.__version__


def run_datacompy(genesis_path, cp_path):
    import datacompy
    import pandas as pd

    started = time.perf_counter()
    genesis = pd.read_csv(genesis_path, dtype=str)
    cp = pd.read_csv(cp_path, dtype=str)
    loaded = time.perf_counter()
    compare_class = getattr(datacompy, "Compare", None) or datacompy.PandasCompare
    compare = compare_class(
        genesis, cp, join_columns="fee_id", df1_name="genesis", df2_name="cp"
    )
    compare.report()
    differences = (
        len(compare.df1_unq_rows)
        + len(compare.df2_unq_rows)
        + len(compare.all_mismatch())
    )
    finished = time.perf_counter()
    return finished - started, finished - loaded, differences, datacompy.__version__


PEERS = {"duckdb": run_duckdb, "polars": run_polars, "datacompy": run_datacompy}

if __name__ == "__main__":
    peer, genesis_csv, cp_csv = sys.argv[1:4]
    load_compare, compare, differences, version = PEERS[peer](genesis_csv, cp_csv)
    print(
        json.dumps(
            {
                "load_compare_s": load_compare,
                "compare_s": compare,
                "differences": differences,
                "version": version,
            }
        )
    )
