import pytest

from agents.metrics import AgentsMetrics
from inference.api.server import ApiMetrics
from inference.metrics import InferenceMetrics
from streams.metrics import ReplayMetrics


@pytest.fixture
def metric_groups():
    """Every process's metric group: each layer defines its own."""
    return (ReplayMetrics, AgentsMetrics, InferenceMetrics, ApiMetrics)
