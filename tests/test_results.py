"""Result helpers that every analysis shares."""

import numpy as np
import pandas as pd

from icl_circuits.results import markdown_table


def test_markdown_table_rounds_floats_only_and_keeps_column_order():
    df = pd.DataFrame({"layer": [0, 1], "task": ["a", "b"], "acc": [0.12345, np.float64(1.0)]})
    assert markdown_table(df).split("\n") == [
        "| layer | task | acc |", "|---|---|---|", "| 0 | a | 0.123 |", "| 1 | b | 1.000 |"]
    assert markdown_table(df, 1).split("\n")[2] == "| 0 | a | 0.1 |"


def test_markdown_table_never_prints_a_small_nonzero_float_as_zero():
    df = pd.DataFrame({"flow": [2.5e-6, 0.0, -0.0004, 0.0005]})
    assert [r.strip("| ") for r in markdown_table(df).split("\n")[2:]] == ["2.50e-06", "0.000", "-4.00e-04", "0.001"]
