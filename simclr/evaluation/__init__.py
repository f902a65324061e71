"""Evaluation, honest by construction: features of a frozen encoder
(:mod:`~simclr.evaluation.features`, cached by :mod:`~simclr.evaluation.cache`), the labeled
splits (:mod:`~simclr.evaluation.splits`), the protocols as pure functions (linear probe,
linear_sgd and kNN in :mod:`~simclr.evaluation.protocols`; k-means in
:mod:`~simclr.evaluation.clustering`; fine-tuning in :mod:`~simclr.evaluation.finetune`), a run's
encoder as a module (:mod:`~simclr.evaluation.encoder`), results that accumulate
(:mod:`~simclr.evaluation.results`) and the one pipeline that runs them
(:mod:`~simclr.evaluation.pipeline`).

Named ``evaluation``, not ``evaluate``: ``simclr.evaluate`` is the public function."""
