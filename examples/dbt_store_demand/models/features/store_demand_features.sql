-- The feature table Podium trains on: one row per (store, week), only what is known before the
-- week starts, plus the week's outcome (units_sold, excluded by the spec) and its class (the target).
with sales as (
    select
        *,
        lag(units_sold) over (partition by store_id order by week_start) as units_last_week,
        avg(units_sold) over (
            partition by store_id order by week_start rows between unbounded preceding and 1 preceding
        ) as usual_units
    from {{ ref('stg_weekly_sales') }}
)
select
    sales.store_id,
    sales.week_start,
    stores.store_name,
    stores.region,
    stores.store_format,
    sales.promo_depth,
    sales.price_index,
    sales.temperature,
    sales.holiday_week,
    round(100.0 * sales.units_last_week / nullif(sales.usual_units, 0), 1) as sales_last_week,
    sales.units_sold,
    sales.demand_class
from sales
join {{ ref('stg_stores') }} as stores using (store_id)
