"""Global, model-level probes: what a model fills in, what it considers typical of a class."""

__all__: list[str] = []
