"""Reading and validating a product catalogue (JSONL or CSV) and storing it in an index.

Every problem is reported as a ``DataError`` naming the file, the line and the field, and the
whole file is validated before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from shopsearch.errors import DataError
from shopsearch.retrieval.types import Product

KNOWN_FIELDS = ("id", "title", "description", "brand", "category", "price", "attributes")

# Files are decoded with errors="surrogateescape", which turns each byte that is not UTF-8 into
# one of these code points, so that the line holding it can be named.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# A JSON escape such as "\ud800" decodes to a lone surrogate, which no UTF-8 file can store.
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    except (TypeError, ValueError, OverflowError):
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
        except (ValueError, RecursionError):  # a number over 4300 digits, or deep nesting
            raise DataError(
                "attributes must be a JSON object: number too long or nesting too deep",
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
    product = Product(
        id=str(raw_id).strip(),
        title=title.strip(),
        price=_parse_price(record.get("price"), path, line),
        attributes=attributes,
        **text_fields,
    )
    texts = {"id": product.id, "title": product.title, **text_fields}
    if attributes:
        texts["attributes"] = json.dumps(attributes, ensure_ascii=False)
    if _SURROGATE.search("".join(texts.values())):  # one search; the loop only names the field
        for name, text in texts.items():
            bad = _SURROGATE.search(text)
            if bad:
                raise DataError(
                    f"{bad.group()!r} is half of a UTF-16 pair (a broken \\u escape), not text",
                    path=path,
                    line=line,
                    field=name,
                )
    return product


def _utf8_lines(handle: Iterable[str], path: Path) -> Iterator[str]:
    """The lines of a file opened with ``errors="surrogateescape"``, refusing the first one
    that is not UTF-8."""
    for line_no, line in enumerate(handle, start=1):
        bad = _UNDECODABLE.search(line)
        if bad:
            raise DataError(
                f"not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x} at column "
                f"{bad.start() + 1}); save the file as UTF-8",
                path=str(path),
                line=line_no,
            )
        yield line


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as handle:
        for line_no, line in enumerate(_utf8_lines(handle, path), start=1):
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
            except (ValueError, RecursionError) as exc:
                # json.loads raises these for an integer of over 4300 digits and deep nesting.
                what = "nested too deep" if isinstance(exc, RecursionError) else "number too long"
                raise DataError(f"malformed JSON ({what})", path=str(path), line=line_no) from None
            if not isinstance(record, dict):
                raise DataError("each line must be a JSON object", path=str(path), line=line_no)
            yield line_no, record


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        # strict: leniently read, an unclosed quote swallows every later row into one field.
        reader = csv.DictReader(_utf8_lines(handle, path), delimiter=delimiter, strict=True)
        try:
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
        except csv.Error as exc:
            # DictReader.line_num is the last line of the last good row.
            raise DataError(
                f"malformed CSV ({exc}) in the row starting on this line",
                path=str(path),
                line=reader.line_num + 1,
            ) from None


def read_catalog(path: str | Path) -> list[Product]:
    """Read and validate a whole catalogue. Raises ``DataError`` on the first problem."""
    path = Path(path)
    if path.is_dir():
        raise DataError("is a directory, not a catalogue file", path=str(path))
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
