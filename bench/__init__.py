"""The harness: specs, sweeps, aggregation, plots, reports, regression gate, latency profiling."""
