"""Lightning callbacks: monitor explanations, gate on faithfulness, run global probes."""

__all__: list[str] = []
