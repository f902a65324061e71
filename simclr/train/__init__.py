"""Pretraining: :func:`~simclr.train.pretrain.pretrain` sets a run up and
:func:`~simclr.train.loop.train` runs it; one step (:mod:`~simclr.train.step`) of the
contrastive loss (:mod:`~simclr.train.loss`) with LARS / SGD / Adam and the lr schedule
(:mod:`~simclr.train.optim`); what a run is and changes (:mod:`~simclr.train.state`); the run
directory, its files and resume rules (:mod:`~simclr.train.rundir`); processes
(:mod:`~simclr.train.dist`); the online kNN monitor (:mod:`~simclr.train.monitor`, on
evaluation's pure functions) and TensorBoard (:mod:`~simclr.train.tensorboard`)."""
