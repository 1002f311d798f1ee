-- One row per store and week (a Monday): what was on the shelf, and what sold.
select
    store_id,
    week_start,
    promo_depth,
    price_index,
    temperature,
    holiday_week,
    units_sold,
    demand_class
from {{ ref('raw_weekly_sales') }}
