"""Tests of pdiff_hf.hub, one module per module of the package."""
