"""Training utilities: optimizers and learning-rate schedules from DeePTB ``train_options``
(:mod:`eqtb.train.optim`), atomic checkpoint files and restartable random state
(:mod:`eqtb.train.checkpoint`)."""
