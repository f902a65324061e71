"""Tools on top of training and evaluation: experiment grids (`sweep`), run
reports and loss curves (`report`), pictures of what an encoder learned
(`pictures`), the step benchmark (`bench`) and export to
other libraries' names (`export`)."""
