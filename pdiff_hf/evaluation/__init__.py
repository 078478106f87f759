"""Scoring parameter vectors on their network: batched evaluation under ``vmap`` (:mod:`.batched`), data sources and
batches (:mod:`.data`), logits and metrics (:mod:`.scoring`), BatchNorm recalibration (:mod:`.recalibration`) and
per-task scoring of conditional pipelines (:mod:`.conditional`)."""
