"""Stand-ins and drivers the tests share with the benchmarks (which import them from here)."""
