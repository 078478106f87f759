"""Pipelines of pdiff_hf. This folder is installed as ``pdiff_hf.pipelines``."""

from .pipeline_pdiff import PDiffPipeline, PDiffPipelineOutput

__all__ = ["PDiffPipeline", "PDiffPipelineOutput"]
