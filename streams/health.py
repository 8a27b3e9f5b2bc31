"""Readiness signalling between a supervisor and the worker processes it starts."""
from __future__ import annotations

import os
from pathlib import Path


def mark_ready(env_var: str = "FINLLM_READY_FILE") -> None:
    """Create the file named by `env_var` (if set) once the process is ready to take work."""
    path = os.environ.get(env_var)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(str(os.getpid()))
