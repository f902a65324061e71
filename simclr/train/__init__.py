"""Pretraining: `pretrain` sets a run up and
`train` runs it; one step (`step`) of the
contrastive loss (`loss`) with LARS / SGD / Adam and the lr schedule
(`optim`); what a run is and changes (`state`); the run
directory, its files and resume rules (`rundir`); processes
(`dist`); the online kNN monitor (`monitor`, on
evaluation's pure functions) and TensorBoard (`tensorboard`)."""
