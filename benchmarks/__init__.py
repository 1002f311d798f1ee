"""Performance harness: `python -m benchmarks` measures the budgets in ../shared/DESIGN.md."""
