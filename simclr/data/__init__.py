"""Data, the first layer above the core: official-format readers
(`readers`, `idx`, `unpickle`), download
with checksums and safe extraction (`download`), image folders
(`folder`), the ``DATASETS`` registry and loading
(`datasets`), and the batch order: in memory (`loader`) or
streamed from files (`stream`). Images are uint8 ``N x C x H x W``, labels int64
(-1 unlabeled)."""
