"""Messy real files: the REC-TMALL sample (when LLMREC_DATA_DIR is set) and one small file per problem it has:
binary files under text names, ids spelled differently in the log and the catalog, ``null`` strings,
image URLs that are never fetched, byte-order marks and titles in other scripts."""

from __future__ import annotations

import gzip
import re
import socket
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from llmrec.config import ConfigError
from llmrec.data import DataError, load_data_config, prepare
from llmrec.data.stats import format_stats

from .conftest import generic_config, random_log, write_log

ROOT = Path(__file__).resolve().parents[2]
TMALL_CONFIG = ROOT / "configs/data/rec_tmall_sample.yaml"
GOOD = random_log(n_users=6, n_items=10, per_user=12)
ITEMS = sorted({row[1] for row in GOOD}, key=lambda i: int(i[1:]))  # 'i0', 'i1', ...


def _tmall(tmp_path, *overrides):
    return load_data_config(TMALL_CONFIG, [f"cache_dir={tmp_path / 'cache'}", *overrides])


def test_rec_tmall_sample_prepares_with_the_id_map(tmp_path, llmrec_data_dir):
    ds = prepare(_tmall(tmp_path))
    stats = ds.stats
    raw = stats["raw"]  # SOURCE.md: 4,844 actions by 836 users on 554 items
    assert (raw["users"], raw["items"], raw["interactions"]) == (836, 554, 4844)
    assert raw["per_behavior"] == {"click": 4474, "collect": 5, "cart": 358, "alipay": 7}
    removed = stats["removed"]
    assert removed["duplicate_interactions"] == 241 and removed["interactions_not_in_catalog"] == 0
    assert removed["catalog_items_without_interactions"] == 8  # 562 products, 554 logged
    filtered = stats["filtered"]
    assert (filtered["users"], filtered["items"], filtered["interactions"]) == (140, 467, 3714)
    assert stats["filtered"]["per_behavior"] == {"click": 3411, "collect": 1, "cart": 295, "alipay": 7}
    assert stats["samples"] == {"train": 2992, "valid": 140, "test": 140}
    assert stats["loader"] == {"catalog_null_strings.brand_id": 198, "empty_titles_filled": 0,
                               "catalog_image_urls_not_fetched": 562}
    assert stats["catalog"]["items_without_image"] == 0  # the URLs stay in the catalog for `llmrec encode`
    # ids follow the catalog's spelling; Chinese titles are kept exactly as written; 'null' brands are missing
    products = pd.read_csv(llmrec_data_dir / "rec-tmall-sample" / "sam_tianchi_2014001_rec_tmall_product.csv",
                           encoding="gb18030", dtype=str, keep_default_na=False).set_index("item_id")
    kept = products.loc[ds.item_ids]
    assert ds.item_titles() == kept["title"].tolist()
    assert ds.item_titles()[0] == "2014 秋冬款 绵羊皮皮衣 特价 男士皮衣 立领 修身 短款 真皮夹克 外套 "
    assert ds.catalog["brand_id"].tolist() == kept["brand_id"].replace("null", "").tolist()
    assert (ds.catalog["brand_id"] == "").sum() == (kept["brand_id"] == "null").sum() > 0
    assert ds.catalog["image"].tolist() == kept["pict_url"].tolist()
    report = format_stats(stats)
    assert "images: 562 catalog items (before filtering) have an http(s) image URL; none was fetched" in report
    assert ds.behaviors == ["click", "collect", "cart", "alipay"] and ds.target_behavior == "click"


def test_rec_tmall_sample_without_the_id_map_suggests_it(tmp_path, llmrec_data_dir):
    with pytest.raises(DataError) as err:
        prepare(_tmall(tmp_path, "columns.id_map={}"))
    msg = str(err.value)
    assert "no interaction's item id is in the item catalog" in msg
    assert "item ids like ['i161'," in msg and "ids like ['277', '185'," in msg
    assert 'id_map: {item: {strip_prefix: "i"}}' in msg and "would match 554 of its 554 items" in msg


def test_rec_tmall_review_workbook_is_named_for_what_it_is(tmp_path, llmrec_data_dir):
    review = llmrec_data_dir / "rec-tmall-sample" / "sam_tianchi_2014003_rec_tmall_review.xlsx"
    with pytest.raises(DataError, match=re.escape(f"{review} is an Excel workbook (xlsx), not CSV text; export")):
        prepare(_tmall(tmp_path, f"items_path={review}"))


# --- binary files under text names --------------------------------------------------------------------------------

def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def test_workbook_named_csv_is_an_error_saying_what_it_is(tmp_path):
    book = _zip(tmp_path / "log.csv", {"[Content_Types].xml": "<Types/>", "xl/workbook.xml": "<workbook/>"})
    with pytest.raises(DataError, match=re.escape(f"{book} is an Excel workbook (xlsx), not CSV text; export the")):
        prepare(generic_config(tmp_path, book, "encoding=gb18030"))  # never reaches the gb18030 decoder


def test_zip_archive_names_its_members(tmp_path):
    archive = _zip(tmp_path / "log.csv", {"log.csv": "user_id,item_id\n"})
    with pytest.raises(DataError, match=re.escape(f"{archive} is a zip archive (holding log.csv), not CSV text")):
        prepare(generic_config(tmp_path, archive))


def test_gzip_file_is_an_error_saying_what_it_is(tmp_path):
    packed = tmp_path / "log.csv"
    packed.write_bytes(gzip.compress(b"user_id,item_id,behavior,timestamp\nu1,i1,buy,1\n"))
    with pytest.raises(DataError, match=re.escape(f"{packed} is a gzip-compressed file, not CSV text; decompress")):
        prepare(generic_config(tmp_path, packed))


def test_parquet_named_csv_suggests_the_parquet_source(tmp_path):
    log = tmp_path / "log.csv"
    pd.DataFrame(GOOD, columns=["user_id", "item_id", "behavior", "timestamp"]).to_parquet(log)
    with pytest.raises(DataError, match=re.escape(f"{log} is a Parquet file, not CSV text; use `source: parquet`")):
        prepare(generic_config(tmp_path, log))
    as_parquet = prepare(generic_config(tmp_path, log, "source=parquet", "k_core=1"))
    assert as_parquet.stats["raw"]["interactions"] == len(GOOD)


def test_workbook_named_parquet_and_jsonl(tmp_path):
    book = _zip(tmp_path / "log.parquet", {"xl/workbook.xml": "<workbook/>"})
    with pytest.raises(DataError, match=re.escape(f"{book} is an Excel workbook (xlsx), not a Parquet file")):
        prepare(generic_config(tmp_path, book, "source=parquet"))
    lines = _zip(tmp_path / "log.jsonl", {"xl/workbook.xml": "<workbook/>"})
    with pytest.raises(DataError, match=re.escape(f"{lines} is an Excel workbook (xlsx), not JSON lines text")):
        prepare(generic_config(tmp_path, lines, "source=jsonl"))


def test_byte_order_marks(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD, encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with EF BB BF
    assert prepare(generic_config(tmp_path, log, "k_core=1")).stats["raw"]["interactions"] == len(GOOD)
    wide = write_log(tmp_path / "wide.csv", GOOD, encoding="utf-16")
    bom = f"{wide}: the file starts with a UTF-16 byte-order mark; set `encoding: utf-16`"
    with pytest.raises(DataError, match=re.escape(bom)):
        prepare(generic_config(tmp_path, wide))
    decoded = prepare(generic_config(tmp_path, wide, "k_core=1", "encoding=utf-16"))
    assert decoded.stats["raw"]["interactions"] == len(GOOD)


# --- ids spelled differently in the log and the catalog --------------------------------------------------------------

def _catalog(path: Path, rows: list[str], header: str = "item_id,title", encoding: str = "utf-8") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return path


def test_mismatched_prefixes_show_both_sides_and_the_id_map_to_use(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD)
    catalog = _catalog(tmp_path / "items.csv", [f"{i[1:]},title {i[1:]}" for i in ITEMS])
    with pytest.raises(DataError) as err:
        prepare(generic_config(tmp_path, log, f"items_path={catalog}"))
    msg = str(err.value)
    assert f"the log {log} has item ids like ['i" in msg and f"the catalog {catalog} has ids like ['0', '1', '2'" in msg
    assert '`columns: {id_map: {item: {strip_prefix: "i"}}}`' in msg
    assert f"would match {len(ITEMS)} of its {len(ITEMS)} items" in msg
    id_map = "columns.id_map={item: {strip_prefix: i}}"
    ds = prepare(generic_config(tmp_path, log, f"items_path={catalog}", "k_core=1", id_map))
    assert ds.item_ids == [i[1:] for i in ITEMS] and ds.item_titles()[0] == "title 0"
    assert ds.stats["removed"]["interactions_not_in_catalog"] == 0


def test_catalog_prefix_suggests_add_prefix(tmp_path):
    log = write_log(tmp_path / "log.csv", [(u, i[1:], b, t) for u, i, b, t in GOOD])
    catalog = _catalog(tmp_path / "items.csv", [f"item{i[1:]},title {i}" for i in ITEMS])
    with pytest.raises(DataError, match=re.escape('{item: {add_prefix: "item"}}')):
        prepare(generic_config(tmp_path, log, f"items_path={catalog}"))
    id_map = "columns.id_map={item: {add_prefix: item}}"
    cfg = generic_config(tmp_path, log, f"items_path={catalog}", "k_core=1", id_map)
    assert prepare(cfg).item_ids == [f"item{i[1:]}" for i in ITEMS]


def test_unrelated_ids_get_no_false_suggestion(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD)
    catalog = _catalog(tmp_path / "items.csv", ["sku-a,a", "sku-b,b"])
    with pytest.raises(DataError, match="Check that the log and the catalog belong together") as err:
        prepare(generic_config(tmp_path, log, f"items_path={catalog}"))
    assert "would match" not in str(err.value)


def test_id_without_the_prefix_to_strip_names_the_row(tmp_path):
    rows = list(GOOD)
    rows[4] = (rows[4][0], "161", *rows[4][2:])
    log = write_log(tmp_path / "log.csv", rows)
    with pytest.raises(DataError, match=re.escape(
            f"{log}: row 5 (line 6): item id '161' does not start with 'i' (1 rows; config key "
            f"columns.id_map.item.strip_prefix)")):
        prepare(generic_config(tmp_path, log, "columns.id_map={item: {strip_prefix: i}}"))


@pytest.mark.parametrize("id_map", ["{item: {}}", "{product: {strip_prefix: i}}", "{item: {strip: i}}"])
def test_bad_id_maps_fail_when_the_config_loads(tmp_path, id_map):
    with pytest.raises(ConfigError, match="columns"):
        generic_config(tmp_path, tmp_path / "log.csv", f"columns.id_map={id_map}")


# --- null strings, image URLs, titles in other scripts ------------------------------------------------------------

def test_null_strings_in_catalog_fields_are_missing_values(tmp_path):
    log = write_log(tmp_path / "log.csv", GOOD)
    rows = [f"{i},title {i},NULL,b{n}" for n, i in enumerate(ITEMS)]
    rows[0] = f"{ITEMS[0]},null,\\N,null"
    catalog = _catalog(tmp_path / "items.csv", rows, header="item_id,title,category,brand_id")
    cfg = generic_config(tmp_path, log, f"items_path={catalog}", "k_core=1",
                         "item_columns={category: category, extra: [brand_id]}")
    ds = prepare(cfg)
    assert ds.stats["loader"] == {"catalog_null_strings.title": 1, "catalog_null_strings.category": len(ITEMS),
                                  "catalog_null_strings.brand_id": 1, "empty_titles_filled": 1}
    first = ds.catalog.set_index("item_id").loc[ITEMS[0]]
    assert (first["title"], first["category"], first["brand_id"]) == (f"item {ITEMS[0]}", "", "")
    assert ds.catalog.set_index("item_id").loc[ITEMS[1], "brand_id"] == "b1"


def test_url_images_are_counted_and_never_fetched(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("data preparation tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    log = write_log(tmp_path / "log.csv", GOOD)
    images = ["http://img.example.com/a.jpg", "HTTPS://img.example.com/b.png", "pics/c.png", "", "null"]
    rows = [f"{i},title {i},{images[n % len(images)]}" for n, i in enumerate(ITEMS)]
    catalog = _catalog(tmp_path / "items.csv", rows, header="item_id,title,image")
    ds = prepare(generic_config(tmp_path, log, f"items_path={catalog}", "k_core=1", "item_columns={image: image}"))
    urls = sum(images[n % len(images)].lower().startswith("http") for n in range(len(ITEMS)))
    assert ds.stats["loader"]["catalog_image_urls_not_fetched"] == urls == 4
    assert ds.catalog["image"].iloc[0] == "http://img.example.com/a.jpg"  # kept for `llmrec encode`
    assert ds.catalog["image"].iloc[2] == str((tmp_path / "pics/c.png").resolve())
    assert ds.catalog["image"].iloc[3] is None and ds.catalog["image"].iloc[4] is None
    assert f"images: {urls} catalog items (before filtering) have an http(s) image URL" in format_stats(ds.stats)


@pytest.mark.parametrize("encoding", ["utf-8", "gb18030"])
def test_titles_in_any_script_load_unchanged(tmp_path, encoding):
    titles = ["2014 秋装 新款 打底衫 ", "Ностальгия (1983)", "قميص قطني", "T恤 👕 x", "  Café  ", "Žluťoučký kůň"]
    log = write_log(tmp_path / "log.csv", GOOD)
    chosen = {item: titles[n % len(titles)] + f" #{n}" for n, item in enumerate(ITEMS)}
    catalog = _catalog(tmp_path / "items.csv", [f"{i},{t}" for i, t in chosen.items()], encoding=encoding)
    ds = prepare(generic_config(tmp_path, log, f"items_path={catalog}", "k_core=1", f"encoding={encoding}"))
    assert dict(zip(ds.item_ids, ds.item_titles(), strict=True)) == chosen
