"""Subcommands of ``pdiff-hf``: one module per command, each with ``register(subparsers)`` and a ``run(args)``.

``register`` only adds flags (it runs for every ``pdiff-hf --help``); torch, diffusers, datasets and the rest of
pdiff_hf are imported inside ``run``.
"""
