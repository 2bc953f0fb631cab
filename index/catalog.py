"""Reading and validating a product catalogue (JSONL or CSV) and storing it in an index.

Every problem is reported as a ``DataError`` naming the file, the line and the field, and the
whole file is validated before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

from shopsearch.errors import DataError
from shopsearch.retrieval.types import Product

KNOWN_FIELDS = ("id", "title", "description", "brand", "category", "price", "attributes")


def _parse_price(value: Any, path: str, line: int | None) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise DataError(
            f"price must be a number, got {value!r}", path=path, line=line, field="price"
        )
    try:
        price = (
            float(str(value).strip().replace(",", "")) if isinstance(value, str) else float(value)
        )
    except (TypeError, ValueError):
        raise DataError(
            f"price must be a number, got {value!r}", path=path, line=line, field="price"
        ) from None
    if math.isnan(price) or math.isinf(price) or price < 0:
        raise DataError(
            f"price must be a finite number >= 0, got {value!r}",
            path=path,
            line=line,
            field="price",
        )
    return price


def record_to_product(record: dict[str, Any], path: str, line: int | None) -> Product:
    """Validate one raw record (from JSONL or CSV) into a ``Product``."""
    raw_id = record.get("id")
    if raw_id is None or isinstance(raw_id, (dict, list, bool)) or not str(raw_id).strip():
        raise DataError("missing or empty product id", path=path, line=line, field="id")
    title = record.get("title")
    if not isinstance(title, str) or not title.strip():
        raise DataError(
            "missing or empty title (a non-empty string is required)",
            path=path,
            line=line,
            field="title",
        )
    text_fields = {}
    for name in ("description", "brand", "category"):
        value = record.get(name)
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise DataError(
                f"{name} must be text, got {type(value).__name__}", path=path, line=line, field=name
            )
        text_fields[name] = str(value).strip()
    attributes = record.get("attributes") or {}
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"attributes must be a JSON object: {exc.msg}",
                path=path,
                line=line,
                field="attributes",
            ) from None
    if not isinstance(attributes, dict):
        raise DataError(
            "attributes must be an object of name -> value",
            path=path,
            line=line,
            field="attributes",
        )
    return Product(
        id=str(raw_id).strip(),
        title=title.strip(),
        price=_parse_price(record.get("price"), path, line),
        attributes=attributes,
        **text_fields,
    )


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"malformed JSON ({exc.msg} at column {exc.colno})",
                    path=str(path),
                    line=line_no,
                ) from None
            if not isinstance(record, dict):
                raise DataError("each line must be a JSON object", path=str(path), line=line_no)
            yield line_no, record


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(handle, delimiter=delimiter)
        if (
            not reader.fieldnames
            or "id" not in reader.fieldnames
            or "title" not in reader.fieldnames
        ):
            raise DataError(
                f"the header must name at least 'id' and 'title' columns "
                f"(found {reader.fieldnames})",
                path=str(path),
                line=1,
            )
        for record in reader:
            if None in record:
                raise DataError(
                    "more values than header columns (unquoted comma?)",
                    path=str(path),
                    line=reader.line_num,
                )
            yield reader.line_num, record


def read_catalog(path: str | Path) -> list[Product]:
    """Read and validate a whole catalogue. Raises ``DataError`` on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError("catalogue file not found", path=str(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = _jsonl_records(path)
    elif suffix in (".csv", ".tsv"):
        records = _csv_records(path)
    else:
        raise DataError("unknown catalogue format: use .jsonl or .csv", path=str(path))
    products: list[Product] = []
    first_line: dict[str, int] = {}
    try:
        for line_no, record in records:
            product = record_to_product(record, str(path), line_no)
            if product.id in first_line:
                raise DataError(
                    f"duplicate product id {product.id!r} (first seen on line "
                    f"{first_line[product.id]})",
                    path=str(path),
                    line=line_no,
                    field="id",
                )
            first_line[product.id] = line_no
            products.append(product)
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason})", path=str(path)) from None
    if not products:
        raise DataError("the catalogue is empty", path=str(path))
    return products


def write_products(products: list[Product], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for product in products:
            handle.write(json.dumps(product.to_dict(), ensure_ascii=False) + "\n")


def read_products(path: Path) -> list[Product]:
    """Read the catalogue copy stored inside an index (already validated at build time)."""
    products = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            products.append(record_to_product(json.loads(line), str(path), line_no))
    return products


def catalog_hash(products: list[Product]) -> str:
    """A hash of the catalogue content in id order, independent of the source file format."""
    digest = hashlib.sha256()
    for product in sorted(products, key=lambda p: p.id):
        digest.update(json.dumps(product.to_dict(), ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()
