"""One loader per source: read the files, return canonical interactions + catalog.

* generic ``csv`` / ``parquet`` / ``jsonl``: any interaction table with a column mapping
  (``columns:``) and an optional item table (``items_path:`` + ``item_columns:``);
* ``ml100k`` (``u.data`` + ``u.item``) and ``ml1m`` (``ratings.dat`` + ``movies.dat``):
  ratings become behaviors through ``rating_behaviors`` (<=2 dislike, 3 neutral, >=4 like);
* ``taobao``: Taobao UserBehavior (``user_id,item_id,category_id,behavior_type,timestamp``,
  with or without header); the category id is the only item attribute;
* ``synthetic``: the synthetic shop of :mod:`llmrec.data.synthetic`, generated into the
  cache folder on first use;
* ``recbole``: RecBole atomic files (``<name>.inter`` + optional ``<name>.item``), mapped
  like the generic sources through ``columns:`` / ``item_columns:``.

Generic and RecBole logs may spell ids differently from their catalog (``i161`` vs
``161``): ``columns.id_map`` rewrites the log's ids, and a log sharing no item with its
catalog is an error showing ids of both sides and the ``id_map`` that would match them.

:func:`input_files` lists the files a config reads (their bytes feed the cache fingerprint).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import llmrec.data.synthetic as synthetic
from llmrec.config import to_dict
from llmrec.data.config import GENERIC_SOURCES, DataConfig, IdMap, ItemColumns, expand_env
from llmrec.data.errors import DataError
from llmrec.data.readers import check_text_file, format_of, read_table, read_text_table, require_columns
from llmrec.data.recbole import atomic_files, read_atomic
from llmrec.data.schema import (
    behavior_codes,
    build_catalog,
    build_interactions,
    parse_timestamps,
    rating_codes,
    where,
)
from llmrec.data.stats import IMAGE_URLS_KEY

log = logging.getLogger(__name__)

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
TAOBAO_FILES = ("UserBehavior_head_clean.csv", "UserBehavior.csv")
NULL_STRINGS = ("null", "NULL", "\\N")  # catalog cells that mean "no value" (SQL / Hive exports)
_ID_PREFIX = re.compile(r"^\D*")  # the non-digit start of an id ("i" of "i161")


@dataclass
class RawData:
    """A source's canonical interactions and catalog, plus loader-specific counts."""

    interactions: pd.DataFrame  # columns of llmrec.data.schema.INTERACTION_COLUMNS
    catalog: pd.DataFrame | None  # None: no item file (titles become "item <id>")
    counts: dict[str, int] = field(default_factory=dict)


def _folder_file(cfg: DataConfig, name: str) -> Path:
    folder = cfg.resolve_path("path")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected the {cfg.source} folder holding {name} (config key `path`)")
    return folder / name


def _taobao_file(cfg: DataConfig) -> Path:
    path = cfg.resolve_path("path")
    if path.is_dir():
        for name in TAOBAO_FILES:
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no Taobao file found; expected one of {list(TAOBAO_FILES)} (config key `path`)")
    return path


def synthetic_dir(cfg: DataConfig) -> Path:
    """Where the synthetic shop for ``cfg.synthetic`` lives: keyed by its config and generator code."""
    key = hashlib.sha256()
    key.update(repr(sorted(to_dict(cfg.synthetic).items())).encode())
    key.update(Path(synthetic.__file__).read_bytes())
    return Path(expand_env(cfg.cache_dir, "cache_dir")) / f"synthetic-shop-{key.hexdigest()[:16]}"


def input_files(cfg: DataConfig) -> list[Path]:
    """The files ``cfg`` reads (for the synthetic shop: generated first if needed); all must exist."""
    files = _input_files(cfg)
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: file not found (data config {cfg.name!r}, source {cfg.source!r})")
    return files


def _input_files(cfg: DataConfig) -> list[Path]:
    if cfg.source in GENERIC_SOURCES:
        files = [cfg.resolve_path("path")]
        if cfg.items_path:
            files.append(cfg.resolve_path("items_path"))
        return files
    if cfg.source == "ml100k":
        return [_folder_file(cfg, "u.data"), _folder_file(cfg, "u.item")]
    if cfg.source == "ml1m":
        return [_folder_file(cfg, "ratings.dat"), _folder_file(cfg, "movies.dat")]
    if cfg.source == "taobao":
        return [_taobao_file(cfg)]
    if cfg.source == "recbole":
        inter, item = atomic_files(cfg.resolve_path("path"))
        return [inter] if item is None else [inter, item]
    if cfg.source == "synthetic":
        out = synthetic_dir(cfg)
        synthetic.ensure_shop(cfg.synthetic, out)
        return [out / "interactions.csv", out / "items.csv"]
    raise DataError(f"unknown source {cfg.source!r}")


def load_source(cfg: DataConfig) -> RawData:
    """Dispatch on ``cfg.source``; a log that shares no item id with its catalog is an error showing both."""
    loaders = {"ml100k": load_ml100k, "ml1m": load_ml1m, "taobao": load_taobao, "synthetic": load_synthetic,
               "recbole": load_recbole}
    loader = loaders.get(cfg.source, load_generic)
    raw = loader(cfg)
    if raw.catalog is not None:
        _require_shared_items(cfg, raw)
    return raw


def load_generic(cfg: DataConfig) -> RawData:
    """A CSV / Parquet / JSONL interaction table (+ optional item table) with column mapping."""
    path = cfg.resolve_path("path")
    frame = read_table(path, cfg.source, delimiter=cfg.delimiter, encoding=cfg.encoding)
    header = {"csv": 1, "jsonl": None, "parquet": None}[cfg.source]
    interactions = _mapped_interactions(cfg, frame, path, header)
    counts: dict[str, int] = {}
    catalog = None
    if cfg.items_path:
        items_path = cfg.resolve_path("items_path")
        items = read_table(items_path, format_of(items_path), delimiter=cfg.delimiter, encoding=cfg.encoding)
        header_lines = 1 if format_of(items_path) == "csv" else None
        catalog = _mapped_catalog(cfg.item_columns, items, items_path, header_lines, counts)
    return RawData(interactions, catalog, counts)


def load_recbole(cfg: DataConfig) -> RawData:
    """RecBole atomic files (:mod:`llmrec.data.recbole`): ``<name>.inter`` + optional ``<name>.item``.

    Fields are mapped by ``columns:`` / ``item_columns:`` (names without their ``:type``).
    A token_seq title or text keeps its tokens joined by single spaces; a token_seq
    category becomes ``A|B`` like the MovieLens loaders' genres.
    """
    inter_path, item_path = atomic_files(cfg.resolve_path("path"))
    frame, _ = read_atomic(inter_path, cfg.encoding)
    interactions = _mapped_interactions(cfg, frame, inter_path, 1)
    counts: dict[str, int] = {}
    catalog = None
    if item_path is not None:
        items, types = read_atomic(item_path, cfg.encoding)
        ic = cfg.item_columns
        for column, joiner in ((ic.title, " "), (ic.text, " "), (ic.category, "|")):
            if column is not None and types.get(column) == "token_seq":
                items[column] = items[column].str.split().str.join(joiner)
        catalog = _mapped_catalog(ic, items, item_path, 1, counts)
    return RawData(interactions, catalog, counts)


def _mapped_interactions(cfg: DataConfig, frame: pd.DataFrame, path: Path, header: int | None) -> pd.DataFrame:
    """Canonical interactions from a table read through ``cfg.columns`` (ids rewritten by ``columns.id_map``)."""
    cols = cfg.columns
    require_columns(frame, path, {f"columns.{k}": v for k, v in asdict(cols).items() if k != "id_map"})
    if cols.behavior is not None:
        codes = behavior_codes(frame[cols.behavior], path, header, cfg.behaviors, cfg.behavior_map)
    elif cols.rating is not None:
        codes = rating_codes(frame[cols.rating], path, header, cfg.behaviors, cfg.rating_behaviors)
    else:
        codes = np.full(len(frame), cfg.target_index, dtype=np.int8)
    stamps = parse_timestamps(frame[cols.timestamp], path, header, cfg.timestamp_format)
    users = map_ids(frame[cols.user], cols.id_map.get("user"), path, header, "user")
    items = map_ids(frame[cols.item], cols.id_map.get("item"), path, header, "item")
    return build_interactions(users, items, codes, stamps, path, header)


def map_ids(values: pd.Series, rule: IdMap | None, path: Path, header: int | None, field_name: str) -> pd.Series:
    """Apply ``columns.id_map.<field_name>``: remove ``strip_prefix`` (every id must carry it), add ``add_prefix``."""
    if rule is None:
        return values
    ids = values.astype(str).str.strip()
    if rule.strip_prefix:
        lacking = ~ids.str.startswith(rule.strip_prefix).to_numpy()
        if lacking.any():
            row = int(np.flatnonzero(lacking)[0])
            raise DataError(
                f"{where(path, row, header)}: {field_name} id {ids.iloc[row]!r} does not start with "
                f"{rule.strip_prefix!r} ({int(lacking.sum())} rows; config key "
                f"columns.id_map.{field_name}.strip_prefix)"
            )
        ids = ids.str.slice(len(rule.strip_prefix))
    return rule.add_prefix + ids if rule.add_prefix else ids


def _mapped_catalog(
    ic: ItemColumns, items: pd.DataFrame, path: Path, header_lines: int | None, counts: dict[str, int]
) -> pd.DataFrame:
    """The catalog read through ``item_columns`` (extras kept); ``counts`` gets what was treated as missing.

    Cells holding ``null`` / ``NULL`` / ``\\N`` (SQL and Hive exports) are missing values, counted per
    column as ``catalog_null_strings.<column>``; http(s) images are kept as URLs and counted as
    ``catalog_image_urls_not_fetched`` (preparation never uses the network).
    """
    require_columns(items, path, {f"item_columns.{k}": v for k, v in asdict(ic).items() if k != "extra"})
    require_columns(items, path, {f"item_columns.extra[{i}]": c for i, c in enumerate(ic.extra)})
    fields = [c for c in (ic.title, ic.text, ic.image, ic.category, *ic.extra) if c is not None]
    items = items.copy()
    for column in dict.fromkeys(fields):
        is_null = items[column].str.strip().isin(NULL_STRINGS).to_numpy()
        if is_null.any():
            items.loc[is_null, column] = ""
            counts[f"catalog_null_strings.{column}"] = int(is_null.sum())
    mapping = {"item_id": ic.item, "title": ic.title, "text": ic.text, "image": ic.image, "category": ic.category}
    catalog, counts["empty_titles_filled"] = build_catalog(items, path, header_lines, mapping, image_root=path.parent)
    for column in ic.extra:
        catalog[column] = items[column].to_numpy()
    if ic.image is not None:
        urls = catalog["image"].fillna("").str.contains(r"^https?://", case=False, regex=True)
        counts[IMAGE_URLS_KEY] = int(urls.sum())
    return catalog


def _require_shared_items(cfg: DataConfig, raw: RawData) -> None:
    """Fail when not one logged item id is in the catalog, showing ids of both sides and an ``id_map`` to try."""
    logged = pd.unique(raw.interactions["item_id"])
    listed = raw.catalog["item_id"].to_numpy()
    if (pd.Index(listed).get_indexer(logged) >= 0).any():
        return
    files = _input_files(cfg)
    rule = cfg.columns.id_map.get("item") if cfg.columns is not None else None
    mapped = " (after columns.id_map.item)" if rule is not None else ""
    raise DataError(
        f"{cfg.name}: no interaction's item id is in the item catalog, so nothing can be joined: the log "
        f"{files[0]} has item ids like {list(logged[:5])}{mapped}, the catalog {files[-1]} has ids like "
        f"{list(listed[:5])}. {_id_map_hint(logged, listed)}"
    )


def _id_map_hint(logged: np.ndarray, listed: np.ndarray) -> str:
    """Suggest the ``columns.id_map.item`` that swaps the log's id prefix for the catalog's, if it matches."""
    log_prefix = _ID_PREFIX.match(os.path.commonprefix([str(i) for i in logged])).group()
    catalog_prefix = _ID_PREFIX.match(os.path.commonprefix([str(i) for i in listed])).group()
    if log_prefix != catalog_prefix:
        rewritten = [catalog_prefix + str(i)[len(log_prefix):] for i in logged]
        matched = int((pd.Index(listed).get_indexer(rewritten) >= 0).sum())
        if matched:
            parts = (("strip_prefix", log_prefix), ("add_prefix", catalog_prefix))
            rule = ", ".join(f'{key}: "{value}"' for key, value in parts if value)
            return (f"Rewriting the log's ids with `columns: {{id_map: {{item: {{{rule}}}}}}}` in the data config "
                    f"would match {matched} of its {len(logged)} items.")
    return ("Check that the log and the catalog belong together, or rewrite the log's ids with "
            "`columns.id_map.item` (strip_prefix / add_prefix; docs/data.md).")


def _movielens_catalog(
    ids: pd.Series, titles: pd.Series, dates: pd.Series, genres_or_flags: np.ndarray, path: Path
) -> tuple[pd.DataFrame, int]:
    """Catalog rows for MovieLens: text = title + genres (+ release date), category = genres."""
    if genres_or_flags.ndim == 2:  # ML-100k: 19 binary genre flags per movie
        genres = ["|".join(g for g, on in zip(ML100K_GENRES, row, strict=True) if on) for row in genres_or_flags]
    else:  # ML-1M: "Animation|Children's|Comedy"
        genres = [str(g) for g in genres_or_flags]
    text = [
        f"{t}. Genres: {g.replace('|', ', ') or 'unknown'}." + (f" Released {d}." if d else "")
        for t, g, d in zip(titles, genres, dates, strict=True)
    ]
    frame = pd.DataFrame({"item_id": ids, "title": titles, "text": text, "category": genres, "release_date": dates})
    catalog, filled = build_catalog(frame, path, 0,
                                    {"item_id": "item_id", "title": "title", "text": "text", "category": "category"})
    catalog["release_date"] = frame["release_date"].to_numpy()
    return catalog, filled


def load_ml100k(cfg: DataConfig) -> RawData:
    """MovieLens-100k: ``u.data`` (user, item, rating, timestamp; tab) + ``u.item`` (latin-1, ``|``)."""
    data_path, item_path = _folder_file(cfg, "u.data"), _folder_file(cfg, "u.item")
    ratings = read_text_table(data_path, delimiter="\t", header=False, names=["user", "item", "rating", "timestamp"],
                              encoding=cfg.encoding)
    codes = rating_codes(ratings["rating"], data_path, 0, cfg.behaviors, cfg.rating_behaviors)
    stamps = parse_timestamps(ratings["timestamp"], data_path, 0)
    interactions = build_interactions(ratings["user"], ratings["item"], codes, stamps, data_path, 0)
    names = ["item_id", "title", "release_date", "video_release_date", "url", *ML100K_GENRES]
    items = read_text_table(item_path, delimiter="|", header=False, names=names, encoding=cfg.encoding or "latin-1")
    flags = items[list(ML100K_GENRES)].to_numpy() == "1"
    catalog, filled = _movielens_catalog(items["item_id"], items["title"], items["release_date"], flags, item_path)
    return RawData(interactions, catalog, {"empty_titles_filled": filled})


def _read_double_colon(path: Path, names: list[str], encoding: str) -> pd.DataFrame:
    """ML-1M's ``::``-separated files, read fast by the C parser (``::`` -> tab)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    check_text_file(path, "'::'-separated")
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: cannot decode as {encoding} (byte offset {err.start}); set `encoding:`") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return pd.read_csv(io.StringIO(text.replace("::", "\t")), sep="\t", header=None, names=names, dtype=str,
                       keep_default_na=False, quoting=3)


def load_ml1m(cfg: DataConfig) -> RawData:
    """MovieLens-1M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) + ``movies.dat`` (latin-1)."""
    data_path, item_path = _folder_file(cfg, "ratings.dat"), _folder_file(cfg, "movies.dat")
    ratings = _read_double_colon(data_path, ["user", "item", "rating", "timestamp"], cfg.encoding or "utf-8")
    codes = rating_codes(ratings["rating"], data_path, 0, cfg.behaviors, cfg.rating_behaviors)
    stamps = parse_timestamps(ratings["timestamp"], data_path, 0)
    interactions = build_interactions(ratings["user"], ratings["item"], codes, stamps, data_path, 0)
    movies = _read_double_colon(item_path, ["item_id", "title", "genres"], cfg.encoding or "latin-1")
    catalog, filled = _movielens_catalog(movies["item_id"], movies["title"], pd.Series([""] * len(movies)),
                                         movies["genres"].to_numpy(), item_path)
    return RawData(interactions, catalog, {"empty_titles_filled": filled})


def load_taobao(cfg: DataConfig) -> RawData:
    """Taobao UserBehavior; items get ``category <id>`` as text (the only attribute there is).

    Title: ``item <item_id> (category <category_id>)`` so titles stay unique. An item
    listed under several categories keeps its first (counted in ``items_with_several_categories``).
    """
    path = _taobao_file(cfg)
    with path.open("rb") as handle:
        has_header = handle.readline().startswith(b"user_id")
    frame = read_text_table(path, header=has_header, names=None if has_header else TAOBAO_COLUMNS,
                            encoding=cfg.encoding)
    require_columns(frame, path, {f"taobao column {c}": c for c in TAOBAO_COLUMNS})
    header = int(has_header)
    codes = behavior_codes(frame["behavior_type"], path, header, cfg.behaviors, cfg.behavior_map)
    stamps = parse_timestamps(frame["timestamp"], path, header)
    interactions = build_interactions(frame["user_id"], frame["item_id"], codes, stamps, path, header)
    pairs = pd.DataFrame({"item_id": interactions["item_id"], "category": frame["category_id"].str.strip().to_numpy()})
    several = int((pairs.groupby("item_id", sort=False)["category"].nunique() > 1).sum())
    firsts = pairs.drop_duplicates("item_id", keep="first")
    items = pd.DataFrame({
        "item_id": firsts["item_id"].to_numpy(),
        "title": ("item " + firsts["item_id"] + " (category " + firsts["category"] + ")").to_numpy(),
        "text": ("category " + firsts["category"]).to_numpy(),
        "category": firsts["category"].to_numpy(),
    })
    catalog, _ = build_catalog(items, path, header,
                               {"item_id": "item_id", "title": "title", "text": "text", "category": "category"})
    return RawData(interactions, catalog, {"items_with_several_categories": several})


def load_synthetic(cfg: DataConfig) -> RawData:
    """The synthetic shop (generated into the cache folder on first use)."""
    interactions_path, items_path = input_files(cfg)
    frame = read_text_table(interactions_path)
    codes = behavior_codes(frame["behavior"], interactions_path, 1, cfg.behaviors, cfg.behavior_map)
    stamps = parse_timestamps(frame["timestamp"], interactions_path, 1)
    interactions = build_interactions(frame["user_id"], frame["item_id"], codes, stamps, interactions_path, 1)
    items = read_text_table(items_path)
    extras = [c for c in items.columns if c not in ("item_id", "title", "text", "image", "category")]
    catalog, filled = build_catalog(
        items, items_path, 1,
        {"item_id": "item_id", "title": "title", "text": "text", "image": "image", "category": "category"},
        image_root=items_path.parent,
    )
    for column in extras:
        catalog[column] = items[column].to_numpy()
    return RawData(interactions, catalog, {"empty_titles_filled": filled})
