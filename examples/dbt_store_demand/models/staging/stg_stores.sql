-- One row per store, as the source system lists them.
select
    store_id,
    store_name,
    lower(region) as region,
    lower(store_format) as store_format
from {{ ref('raw_stores') }}
