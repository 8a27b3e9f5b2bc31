"""Time units. Event and wall times are integer nanoseconds (`ts_ns`, `*_wall_ns`); these turn them into
the units in other names (`*_ms`, `*_s`)."""

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
