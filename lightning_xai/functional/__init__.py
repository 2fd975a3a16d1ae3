"""Pure tensor functions behind every metric and aggregate (no state)."""

__all__: list[str] = []
