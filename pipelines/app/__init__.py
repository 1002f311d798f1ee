"""`podium app`: a Streamlit app over the spec's warehouse tables, for the analysts who read the scores.

- `queries`: what each page reads, aggregated in the warehouse;
- `pages`: one function per page, drawn with Streamlit;
- `main`: the Streamlit script (a warehouse opened read-only per rerun);
- `launch`: how `podium app` starts Streamlit on it.
"""
