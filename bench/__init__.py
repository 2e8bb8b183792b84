"""Side-by-side benchmarks: sluice against a peer or the pyarrow floor, as ratios."""
