"""Arrival traces: the production Stable Diffusion log and plain CSVs, windowed and time-scaled.

Two formats, told apart by their header:
- the production trace (``../shared/traces/alibaba-genai-2026-lora_request_trace.csv``): columns
  ``gmt_create`` (``YYYY-MM-DD HH:MM:SS``), ``num_images_per_prompt``, ``num_inference_steps``,
  ``groupId`` (the tenant), ``checkpoint_model_version_id`` (the checkpoint) and, in the file
  ``...-with-lora-ids.csv``, ``lora_ids`` (``L####:scale`` joined by ``;``);
- a plain CSV: ``timestamp[,n,steps[,tenant]]`` with ``timestamp`` in seconds, and optionally
  columns named ``model`` and ``loras`` (the same ``id:scale;...`` form) anywhere after them.
Missing ``n`` means 1 image; missing ``steps`` means the server's default; missing tenant, model, "".
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Arrival:
    """One request to send ``at`` seconds after the start of the run."""

    at: float
    n: int = 1
    steps: int | None = None
    tenant: str = ""  # who sent it (the production trace's groupId)
    model: str = ""  # its checkpoint (the production trace's checkpoint_model_version_id)
    kind: str = "text"  # text, img2img or inpaint (the production trace's predict_type)
    loras: tuple[str, ...] = ()  # its LoRA adapters, "id:scale" each (the trace's lora_ids)


#: The production trace's ``predict_type`` → sdserve's request kinds.
TRACE_KINDS = {"TXT_2_IMG": "text", "IMG_2_IMG": "img2img", "INPAINTING": "inpaint"}


def _number(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    value = float(text)
    return None if math.isnan(value) else value


def parse_loras(text: str | None) -> tuple[str, ...]:
    """``"L0018:0.8;L0077:1"`` → ``("L0018:0.8", "L0077:1")``; empty → ``()``."""
    return tuple(part.strip() for part in (text or "").split(";") if part.strip())


class TraceError(ValueError):
    """A trace or window that cannot be read; the message names the file, line or text at fault."""


def _parse_time(text: str) -> float:
    """Seconds, or a date and time in ISO form (``2024-12-06 00:00:00``; seconds or the time may be left out)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise TraceError(f"{text!r} is neither seconds nor a date and time like 2024-12-06 00:00:00") from None


def parse_window(window: str | None) -> tuple[float | None, float | None]:
    """``START..END`` (either side optional): datetimes or seconds, END exclusive."""
    if not window:
        return None, None
    start, sep, end = window.partition("..")
    if not sep:
        raise TraceError(f"window {window!r} must look like START..END (either side may be empty)")
    return (_parse_time(start) if start else None, _parse_time(end) if end else None)


@dataclass(frozen=True)
class _Columns:
    """Where a trace's fields are, read from its header once."""

    time: int = 0
    n: int | None = None
    steps: int | None = None
    tenant: int | None = None
    model: int | None = None
    predict: int | None = None
    loras: int | None = None

    @classmethod
    def of(cls, header: list[str], path: str | Path) -> _Columns:
        def column(name: str) -> int | None:
            return header.index(name) if name in header else None

        loras = next((header.index(name) for name in ("lora_ids", "loras") if name in header), None)
        if "gmt_create" in header:
            return cls(header.index("gmt_create"), column("num_images_per_prompt"), column("num_inference_steps"),
                       column("groupId"), column("checkpoint_model_version_id"), column("predict_type"), loras)
        if not header or header[0] != "timestamp":
            raise TraceError(f"{path}: expected a 'gmt_create' or 'timestamp' column, got {header}")
        model = column("model")
        named = (model, loras)  # plain CSVs: n, steps and tenant by position, unless a named column is there
        return cls(0, *(i if i not in named else None for i in (1, 2, 3)), model, None, loras)

    def arrival_fields(self, row: list[str]) -> tuple[float, int, int | None, str, str, str, tuple[str, ...]]:
        """(time, images, steps, tenant, model, kind, loras) of one row."""
        def cell(index: int | None) -> str:
            return row[index].strip() if index is not None and index < len(row) else ""

        n, steps = _number(cell(self.n)), _number(cell(self.steps))
        kind = TRACE_KINDS.get(cell(self.predict), "text")
        return (_parse_time(row[self.time]), int(n) if n else 1, int(steps) if steps else None, cell(self.tenant),
                cell(self.model), kind, parse_loras(cell(self.loras)))


def read_trace(path: str | Path, window: str | None = None, time_scale: float = 1.0) -> list[Arrival]:
    """Arrivals in the window, shifted to start at 0 and divided by ``time_scale`` (10 → 10× faster)."""
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    start, end = parse_window(window)
    rows: list[tuple[float, int, int | None, str, str, str, tuple[str, ...]]] = []
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        columns = _Columns.of([h.strip() for h in next(reader, [])], path)
        for row in reader:
            if not row:
                continue
            try:
                fields = columns.arrival_fields(row)
            except (ValueError, IndexError) as error:
                raise TraceError(f"{path}, line {reader.line_num}: {error}") from None
            t = fields[0]
            if (start is None or t >= start) and (end is None or t < end):
                rows.append(fields)
    rows.sort(key=lambda r: r[0])
    if not rows:
        return []
    origin = start if start is not None else rows[0][0]
    return [Arrival((t - origin) / time_scale, n, steps, tenant, model, kind, loras)
            for t, n, steps, tenant, model, kind, loras in rows]


def busiest_window(path: str | Path, seconds: float = 3600) -> str:
    """The ``START..END`` window of ``seconds`` (aligned to multiples of it) with the most arrivals."""
    counts: dict[float, int] = {}
    production = False
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            production = "gmt_create" in row
            bucket = _parse_time(row["gmt_create"] if production else row["timestamp"]) // seconds * seconds
            counts[bucket] = counts.get(bucket, 0) + 1
    best = max(counts, key=counts.__getitem__)
    if not production:
        return f"{best:g}..{best + seconds:g}"
    fmt = "%Y-%m-%d %H:%M:%S"
    return f"{datetime.fromtimestamp(best).strftime(fmt)}..{datetime.fromtimestamp(best + seconds).strftime(fmt)}"


def resolve_window(path: str | Path, window: str | None) -> str | None:
    """``busiest`` (the busiest hour) and ``busiest-day`` resolved to ``START..END``; others as given."""
    if window == "busiest":
        return busiest_window(path, 3600)
    if window == "busiest-day":
        return busiest_window(path, 86400)
    return window


def split_arrivals(arrivals: list[Arrival], at_s: float) -> tuple[list[Arrival], list[Arrival]]:
    """Arrivals before ``at_s`` and from it on, each part shifted to start at 0 (to tune a setting
    on one part of a trace and score it on the other)."""
    first = [a for a in arrivals if a.at < at_s]
    rest = [dataclasses.replace(a, at=a.at - at_s) for a in arrivals if a.at >= at_s]
    return first, rest
