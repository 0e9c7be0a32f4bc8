"""pytest-agentic: a pytest fix loop, task scopes and convention files for coding agents."""

from __future__ import annotations

from pytest_agentic.errors import AgenticError

__all__ = ["AgenticError"]
