"""Data, the first layer above the core: official-format readers
(:mod:`~simclr.data.readers`, :mod:`~simclr.data.idx`, :mod:`~simclr.data.unpickle`), download
with checksums and safe extraction (:mod:`~simclr.data.download`), image folders
(:mod:`~simclr.data.folder`), the ``DATASETS`` registry and loading
(:mod:`~simclr.data.datasets`), and the batch order: in memory (:mod:`~simclr.data.loader`) or
streamed from files (:mod:`~simclr.data.stream`). Images are uint8 ``N x C x H x W``, labels int64
(-1 unlabeled)."""
