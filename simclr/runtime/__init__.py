"""What every layer may use: where and how numbers are computed (`compute`:
device, precision, autocast, seeded generators), atomic file writes
(`files`) and the caching allocator (`allocator`).
The bottom layer with `simclr.errors` and `simclr.config`."""
