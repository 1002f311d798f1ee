"""Write this dbt project's seeds from the store-demand example's synthetic table.

SYNTHETIC DATA (see ../store_demand/make_data.py). The single ready-made table is split back into
what a source system would hold: the stores (one row each) and the weekly sales, without the
features the dbt models derive (last week's sales index). A rerun writes the same bytes.

    python examples/dbt_store_demand/make_seeds.py
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE.parent / "store_demand" / "data" / "weekly_demand.csv.gz"
STORE_COLUMNS = ["store_id", "store_name", "region", "store_format"]
SALES_COLUMNS = [
    "store_id", "week_start", "promo_depth", "price_index", "temperature", "holiday_week", "units_sold",
    "demand_class",
]  # fmt: skip


def main() -> None:
    with gzip.open(SOURCE, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    stores = {row["store_id"]: [row[c] for c in STORE_COLUMNS] for row in rows}
    _write(HERE / "seeds" / "raw_stores.csv", STORE_COLUMNS, sorted(stores.values()))
    sales = [[row[c] for c in SALES_COLUMNS] for row in rows]
    _write(HERE / "seeds" / "raw_weekly_sales.csv", SALES_COLUMNS, sales)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


if __name__ == "__main__":
    main()
