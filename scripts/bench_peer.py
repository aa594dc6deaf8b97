"""The peer of scripts/bench: datacompy comparing the two sides' fees as CSV.
Prints the seconds the comparison alone took (loading the CSVs is not timed)."""
import sys
import time

import datacompy
import pandas as pd

genesis = pd.read_csv(sys.argv[1], dtype=str)
cp = pd.read_csv(sys.argv[2], dtype=str)
started = time.perf_counter()
compare_class = getattr(datacompy, "Compare", None) or datacompy.PandasCompare
compare = compare_class(genesis, cp, join_columns="fee_id", df1_name="genesis", df2_name="cp")
compare.report()
print(f"{time.perf_counter() - started:.3f}")
