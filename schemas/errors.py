"""One exception root for everything a wire record can get wrong."""
from __future__ import annotations


class SchemaError(ValueError):
    """A record failed validation. `reason` is a short stable code for dead-letter counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
