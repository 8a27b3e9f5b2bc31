"""CUDA-graph decode captured and replayed on a GPU: the tokens of the eager engine, graphs reused.

Skipped without CUDA; the padded static-buffer forward the graphs capture is checked on CPU by
tests/inference/engine/test_decode_graphs.py and, through the Triton kernels, by test_engine_triton.py.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available():
    pytest.skip("CUDA graphs need a CUDA device", allow_module_level=True)

from inference.engine.config import EngineConfig  # noqa: E402
from inference.engine.engine import Engine  # noqa: E402
from inference.engine.tiny_models import build_tiny_adapter, build_tiny_model  # noqa: E402
from tests.inference.engine.conftest import ADAPTER_SPECS  # noqa: E402
from tests.inference.engine.test_decode_graphs import PLAN, generate  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cuda-graphs")
    model_dir = build_tiny_model(root / "model", "qwen2", vocab_size=320)
    adapters = {name: build_tiny_adapter(model_dir, root / name, rank, target_modules=targets, seed=i + 1)
                for i, (name, (rank, targets)) in enumerate(ADAPTER_SPECS.items())}
    return {"model_dir": model_dir, "adapters": adapters}


def engine_on_gpu(checkpoint: dict, sizes: tuple[int, ...]) -> Engine:
    config = EngineConfig(block_size=4, num_blocks=96, max_num_batched_tokens=64, max_num_seqs=8,
                          max_adapter_slots=4, cuda_graph_sizes=sizes)
    engine = Engine(checkpoint["model_dir"], config, device="cuda")
    for name, path in checkpoint["adapters"].items():
        engine.register_adapter(name, path)
    return engine


def test_replayed_decode_graphs_give_the_eager_tokens(checkpoint):
    eager = engine_on_gpu(checkpoint, sizes=())
    assert eager.runner.decode_graphs is None
    graphed = engine_on_gpu(checkpoint, sizes=(1, 2, 4, 8))
    expected = generate(eager, PLAN, max_new_tokens=9)
    assert generate(graphed, PLAN, max_new_tokens=9) == expected
    graphs = graphed.runner.decode_graphs
    assert graphs.num_replays >= 8 and (8, True) in graphs.graphs     # 6 rows padded to 8, with LoRA
    assert generate(graphed, PLAN[:1], max_new_tokens=5)               # a base-only batch of 1 captures too
    assert (1, False) in graphs.graphs
