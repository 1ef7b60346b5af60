"""sdserve benchmarks: load generation, trace replay, reports and plots, over HTTP."""
