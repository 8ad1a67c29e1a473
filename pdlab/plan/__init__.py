"""`pdlab plan`: recommend a deployment for a GPU budget (search.py: space, bounds, simulate, report, emit,
verify), or rank fixed arms per rate (planner.py, --rate-curve)."""
