"""Bad input gives errors naming file, row and value; duplicates and catalog misses are counted."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from llmrec.data import DataError, prepare

from .conftest import generic_config, random_log, write_log

GOOD = random_log(n_users=6, n_items=10, per_user=12)


def test_missing_column_names_file_column_and_columns_found(tmp_path):
    log = write_log(tmp_path / "log.csv", [r[:3] for r in GOOD], header="user_id,item_id,behavior")
    with pytest.raises(DataError) as err:
        prepare(generic_config(tmp_path, log))
    msg = str(err.value)
    assert str(log) in msg and "'timestamp'" in msg and "columns.timestamp" in msg
    assert "['user_id', 'item_id', 'behavior']" in msg


def test_column_mapping_reads_other_names(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD, header="uid,iid,action,time")
    cfg = generic_config(tmp_path, log, "k_core=1", "columns={user: uid, item: iid, behavior: action, timestamp: time}")
    assert prepare(cfg).stats["raw"]["interactions"] == len(GOOD)


def test_unknown_behavior_names_row_value_and_allowed_values(tmp_path):
    rows = list(GOOD)
    rows[7] = (rows[7][0], rows[7][1], "click", rows[7][3])
    log = write_log(tmp_path / "log.csv", rows)
    with pytest.raises(DataError) as err:
        prepare(generic_config(tmp_path, log))
    msg = str(err.value)
    assert f"{log}: row 8 (line 9)" in msg and "'click'" in msg and "['buy', 'cart', 'view']" in msg
    # behavior_map accepts the raw value
    cfg = generic_config(tmp_path, log, "k_core=1", "behavior_map={click: view}")
    assert (prepare(cfg).stats["raw"]["per_behavior"]["view"]
            == sum(r[2] == "view" for r in GOOD) + (GOOD[7][2] != "view"))


def test_non_numeric_timestamp_names_file_and_row(tmp_path):
    rows = list(GOOD)
    rows[3] = (*rows[3][:3], "yesterday")
    log = write_log(tmp_path / "log.csv", rows)
    with pytest.raises(DataError, match=re.escape(f"{log}: row 4 (line 5): timestamp 'yesterday' is not a number")):
        prepare(generic_config(tmp_path, log))


def test_text_timestamps_with_a_format(tmp_path):
    rows = [(u, i, b, pd.Timestamp(t, unit="s").strftime("%Y/%m/%d %H:%M:%S")) for u, i, b, t in GOOD]
    log = write_log(tmp_path / "log.csv", rows)
    ds = prepare(generic_config(tmp_path, log, "k_core=1", "timestamp_format='%Y/%m/%d %H:%M:%S'"))
    assert ds.sequences[0].timestamps[0] == min(t for u, _, _, t in GOOD if u == "u0")


@pytest.mark.parametrize("content, expected", [("", "the file is empty"),
                                               ("user_id,item_id,behavior,timestamp\n", "the file has no data rows")])
def test_empty_files(tmp_path, content, expected):
    log = tmp_path / "log.csv"
    log.write_text(content)
    with pytest.raises(DataError, match=re.escape(f"{log}: ") + expected):
        prepare(generic_config(tmp_path, log))


def test_duplicate_rows_are_dropped_and_counted(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD + GOOD[:5] + [GOOD[0]])
    ds = prepare(generic_config(tmp_path, log, "k_core=1"))
    assert ds.stats["removed"]["duplicate_interactions"] == 6
    assert ds.stats["raw"]["interactions"] == len(GOOD) + 6
    assert sum(len(s.items) for s in ds.sequences) == len(GOOD) - ds.stats["removed"]["interactions_removed"]


def _catalog(path, titles, encoding="utf-8"):
    lines = ["item_id,title"] + [f"{i},{t}" for i, t in titles.items()]
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def test_latin1_file_needs_the_encoding_key(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD)
    items = sorted({r[1] for r in GOOD})
    catalog = _catalog(tmp_path / "items.csv", {i: f"Café {i}" for i in items}, encoding="latin-1")
    with pytest.raises(DataError) as err:
        prepare(generic_config(tmp_path, log, "k_core=1", f"items_path={catalog}"))
    msg = str(err.value)
    assert str(catalog) in msg and "utf-8" in msg and "line 2" in msg and "encoding: latin-1" in msg
    ds = prepare(generic_config(tmp_path, log, "k_core=1", f"items_path={catalog}", "encoding=latin-1"))
    assert ds.item_titles()[0] == f"Café {ds.item_ids[0]}"


def test_items_missing_from_the_catalog_are_dropped_and_counted(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD)
    items = sorted({r[1] for r in GOOD})
    missing = items[0]
    catalog = _catalog(tmp_path / "items.csv", {i: f"title {i}" for i in items[1:]} | {"zzz": "never seen"})
    ds = prepare(generic_config(tmp_path, log, "k_core=1", f"items_path={catalog}"))
    removed = ds.stats["removed"]
    assert removed["items_not_in_catalog"] == 1
    assert removed["interactions_not_in_catalog"] == sum(r[1] == missing for r in GOOD)
    assert removed["catalog_items_without_interactions"] == 1
    assert missing not in ds.item_ids and ds.catalog["title"].tolist() == [f"title {i}" for i in ds.item_ids]


def test_duplicate_catalog_ids_are_an_error(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD)
    catalog = tmp_path / "items.csv"
    catalog.write_text("item_id,title\ni1,a\ni2,b\ni1,c\n")
    with pytest.raises(DataError, match=r"item id 'i1' appears more than once in the catalog \(rows \[1, 3\]"):
        prepare(generic_config(tmp_path, log, f"items_path={catalog}"))


def test_empty_user_id_names_the_row(tmp_path):
    rows = list(GOOD)
    rows[2] = ("", *rows[2][1:])
    log = write_log(tmp_path / "log.csv", rows)
    with pytest.raises(DataError, match=re.escape(f"{log}: row 3 (line 4): empty user id")):
        prepare(generic_config(tmp_path, log))


def test_missing_input_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        prepare(generic_config(tmp_path, tmp_path / "nope.csv"))
