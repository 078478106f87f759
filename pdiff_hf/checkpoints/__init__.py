"""Checkpoint collections: the dataset format (:mod:`.dataset`), collection from a training run (:mod:`.collect`,
per task: :mod:`.conditional`), import of existing checkpoints from files, the Hub or a ``Trainer`` run
(:mod:`.import_checkpoints`, :mod:`.trainer_callback`), the run-mixing check (:mod:`.run_mixing`) and rows read a
block at a time for large ``D`` (:mod:`.rows`)."""
