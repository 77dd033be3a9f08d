"""Training harness: distributed plumbing, feature-cached accumulation, optimiser/schedule,
checkpoints. Kept import-light: submodules are imported explicitly by whoever needs them
(``from clip4vla.train.optim import build_optimizer``); the model library never imports this."""
