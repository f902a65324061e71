"""Tools on top of training and evaluation: experiment grids (:mod:`~simclr.tools.sweep`), run
reports and loss curves (:mod:`~simclr.tools.report`), pictures of what an encoder learned
(:mod:`~simclr.tools.pictures`), the step benchmark (:mod:`~simclr.tools.bench`) and export to
other libraries' names (:mod:`~simclr.tools.export`)."""
