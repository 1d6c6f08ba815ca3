"""Generation for causal language models: a continuous-batching engine, per-request sampling,
incremental detokenization. In-process; the worker hosts an engine per model."""

from __future__ import annotations

from inference.generation.detokenizer import Detokenizer, StopStrings
from inference.generation.engine import Engine, EngineFull, FinishReason, GenerationRequest, StepOutput
from inference.generation.sampling import SamplingParams

__all__ = [
    "Detokenizer",
    "Engine",
    "EngineFull",
    "FinishReason",
    "GenerationRequest",
    "SamplingParams",
    "StepOutput",
    "StopStrings",
]
