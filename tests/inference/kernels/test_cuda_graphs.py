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

from inference.engine.engine import Engine  # noqa: E402
from tests.inference.engine.conftest import build_checkpoint  # noqa: E402
from tests.inference.engine.test_decode_graphs import PLAN, generate, make_engine  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    return build_checkpoint(tmp_path_factory.mktemp("cuda-graphs"), "qwen2", tie=False)


def engine_on_gpu(checkpoint: dict, sizes: tuple[int, ...]) -> Engine:
    return make_engine(checkpoint, static_decode=False, sizes=sizes, device="cuda")


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
