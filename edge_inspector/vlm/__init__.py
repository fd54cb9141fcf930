"""The VLM agent: Ollama classifies each incident, writes its report and acts through tools."""

from .agent import AgentOutcome, VlmAgent
from .client import OllamaVlm, VlmInvalidAnswerError, VlmUnavailableError
from .enricher import IncidentEnricher

__all__ = [
    "AgentOutcome",
    "IncidentEnricher",
    "OllamaVlm",
    "VlmAgent",
    "VlmInvalidAnswerError",
    "VlmUnavailableError",
]
