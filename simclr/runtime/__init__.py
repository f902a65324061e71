"""What every layer may use: where and how numbers are computed (:mod:`~simclr.runtime.compute`:
device, precision, autocast, seeded generators), atomic file writes
(:mod:`~simclr.runtime.files`) and the caching allocator (:mod:`~simclr.runtime.allocator`).
The bottom layer with :mod:`simclr.errors` and :mod:`simclr.config`."""
