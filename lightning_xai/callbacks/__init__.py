"""Lightning callbacks: monitor explanations, gate on faithfulness, run global probes."""

from lightning_xai.callbacks.explanation_monitor import ExplanationMonitor
from lightning_xai.callbacks.faithfulness_gate import FaithfulnessGate, FaithfulnessRegressionError
from lightning_xai.callbacks.probe_monitor import ProbeMonitor
from lightning_xai.callbacks.similarity_monitor import SimilarityMonitor

__all__: list[str] = [
    "ExplanationMonitor",
    "FaithfulnessGate",
    "FaithfulnessRegressionError",
    "ProbeMonitor",
    "SimilarityMonitor",
]
