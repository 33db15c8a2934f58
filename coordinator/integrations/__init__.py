"""Integrations at the edge: each module needs only its own framework."""

__all__: list[str] = []
