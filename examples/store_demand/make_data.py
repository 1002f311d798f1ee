"""Generate the synthetic weekly store-demand table of the "bring your own table" example.

SYNTHETIC DATA: every value comes from a seeded random process below; no real store, sale or
weather record is in it. It stands in for a feature table a user already has in their warehouse:
one row per (store, week), a time column, a three-class target and a few features known before
the week starts.

    python examples/store_demand/make_data.py            # rewrites data/weekly_demand.csv.gz
    python examples/store_demand/make_data.py OUT.csv.gz

Columns (the types are declared in data/tables.yaml):
    store_id, week_start      the keys; week_start (a Monday) is the time column, 2018-2024
    store_name                text, informational (the spec excludes it)
    region, store_format      text categoricals
    promo_depth               promotion discount in percent (0, 10, 20, 30): the baseline column
    price_index               shelf price against the chain's list price (1.0 = list)
    temperature               the week's forecast mean temperature, degrees C
    holiday_week              1 if the week holds a public holiday
    sales_last_week           the previous week's sales index (empty in a store's first week)
    units_sold                this week's units: known only after the week, so the spec excludes it
    demand_class              the target: high, normal or low demand for the store that week

Only the standard library is used (random.Random is stable across Python versions), and the gzip
header carries no timestamp or file name, so a rerun writes the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
import sys
from datetime import date, timedelta
from pathlib import Path

SEED = 20240601
FIRST_WEEK, LAST_WEEK = date(2018, 1, 1), date(2024, 12, 30)  # Mondays
HOLIDAY_WEEKS = {1, 14, 18, 22, 35, 47, 51, 52}  # ISO weeks with a public holiday (synthetic calendar)
REGIONS = {"north": -4.0, "south": 4.0, "east": 0.0, "west": 1.5}  # mean temperature offset
FORMATS = {"hyper": 0.25, "super": 0.0, "express": -0.2}  # promotion response on top of the common one
STORES = [  # (id, name, region, format, base weekly units)
    (101, "Harbour Road", "south", "hyper", 5200),
    (102, "Mill Lane", "north", "super", 2300),
    (103, "Station Square", "east", "express", 900),
    (104, "Old Market", "west", "super", 2600),
    (105, "Riverside", "south", "express", 1100),
    (106, "Castle Gate", "north", "hyper", 4800),
    (107, "Park View", "east", "super", 2100),
    (108, "Kings Cross", "west", "express", 1000),
]
HEADER = [
    "store_id",
    "week_start",
    "store_name",
    "region",
    "store_format",
    "promo_depth",
    "price_index",
    "temperature",
    "holiday_week",
    "sales_last_week",
    "units_sold",
    "demand_class",
]
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "weekly_demand.csv.gz"


def rows(seed: int = SEED) -> list[list[object]]:
    """Every (store, week) row, ordered by store then week."""
    rng = random.Random(seed)
    out: list[list[object]] = []
    for store_id, name, region, store_format, base in STORES:
        momentum, last_index = 0.0, None
        week = FIRST_WEEK
        while week <= LAST_WEEK:
            season = math.sin(2 * math.pi * (week.timetuple().tm_yday - 110) / 365.25)
            temperature = 11.0 + 9.0 * season + REGIONS[region] + rng.gauss(0, 2.5)
            holiday = int(week.isocalendar().week in HOLIDAY_WEEKS)
            promo = rng.choices([0, 10, 20, 30], weights=[60, 20, 12, 8])[0]
            price = 1.0 - promo / 250 + rng.gauss(0, 0.03)
            momentum = 0.6 * momentum + rng.gauss(
                0, 0.35
            )  # local demand swings, visible in last week's sales
            demand = (
                (0.045 + FORMATS[store_format] / 20) * promo
                + 0.9 * holiday
                - 4.0 * (price - 1.0)
                + (0.05 * max(temperature - 18.0, 0.0) if store_format == "express" else 0.0)
                + momentum
                + rng.gauss(0, 0.45)
            )
            index = 100 * math.exp(0.18 * demand)
            label = "high" if demand > 1.1 else "low" if demand < -0.1 else "normal"
            out.append(
                [
                    store_id,
                    week.isoformat(),
                    name,
                    region,
                    store_format,
                    promo,
                    f"{price:.3f}",
                    f"{temperature:.1f}",
                    holiday,
                    "" if last_index is None else f"{last_index:.1f}",
                    round(base * index / 100),
                    label,
                ]
            )
            last_index, week = index, week + timedelta(weeks=1)
    return out


def write(path: Path, seed: int = SEED) -> int:
    """Write the gzipped CSV (deterministic bytes); return the number of rows."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    data = rows(seed)
    writer.writerows(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.getvalue().encode())
    return len(data)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    print(f"wrote {write(target):,} rows to {target}")
