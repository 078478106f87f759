"""What ``fit_pdiff`` and the training scripts in ``training/`` share: the settings (:mod:`.config`), builders,
losses and loaders (:mod:`.training_utils`), the single-process fit (:mod:`.fit`), resumable script checkpoints
(:mod:`.resume`) and the shuffled-condition control (:mod:`.shuffled_control`)."""
