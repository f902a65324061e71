"""Evaluation, honest by construction: features of a frozen encoder
(`features`, cached by `cache`), the labeled
splits (`splits`), the protocols as pure functions (linear probe,
linear_sgd and kNN in `protocols`; k-means in
`clustering`; fine-tuning in `finetune`), a run's
encoder as a module (`encoder`), results that accumulate
(`results`) and the one pipeline that runs them
(`pipeline`).

Named ``evaluation``, not ``evaluate``: ``simclr.evaluate`` is the public function."""
