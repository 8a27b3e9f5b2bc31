"""Int8 products (inference/kernels/int8.py): close to float32, and a row's result depends on that row only."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference.kernels.int8 import Int8Weight, int8_supported

pytestmark = pytest.mark.skipif(not int8_supported(), reason="no fbgemm/x86 quantised engine in this torch")


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    return torch.randn(384, 96, generator=torch.Generator().manual_seed(0)) * 0.05


def test_int8_product_is_close_to_float32(weight):
    x = torch.randn(40, 96, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(384)
    exact = F.linear(x, weight, bias)
    got = Int8Weight.quantize(weight).linear(x, bias)
    assert got.shape == exact.shape and got.dtype == x.dtype
    assert (got - exact).norm() / exact.norm() < 0.04
    assert not torch.equal(got, exact)            # it did quantise


def test_a_rows_result_does_not_depend_on_its_neighbours(weight):
    """Whatever shares the call (more rows, a row a thousand times larger), row 0 comes out bit-identical."""
    int8 = Int8Weight.quantize(weight)
    x = torch.randn(300, 96, generator=torch.Generator().manual_seed(2))
    alone = int8.linear(x[:1])
    for rows in (2, 7, 64, 255, 300):
        assert torch.equal(int8.linear(x[:rows])[:1], alone)
    assert torch.equal(int8.linear(torch.cat([x[:1], x[1:9] * 1000]))[:1], alone)


def test_bfloat16_rows_and_empty_and_zero_inputs(weight):
    int8 = Int8Weight.quantize(weight)
    x = torch.randn(5, 96).bfloat16()
    assert int8.linear(x).dtype == torch.bfloat16
    assert int8.linear(x[:0]).shape == (0, 384)
    assert torch.equal(int8.linear(torch.zeros(3, 96)), torch.zeros(3, 384))
    assert int8.nbytes() < weight.numel() * weight.element_size() / 3


def test_the_engine_runs_int8_close_to_float32(tiny_model_dir):
    """The same score request through the engine in float32 and in int8: label probabilities within 0.05."""
    from inference.engine.config import EngineConfig
    from inference.engine.engine import Engine
    from inference.engine.sequence import RequestKind

    probs = {}
    for quant in ("none", "int8"):
        engine = Engine(tiny_model_dir, EngineConfig(dtype="float32", quant=quant))
        engine.add_request("r", list(range(3, 60)), RequestKind.SCORE, label_token_ids=(5, 6, 7))
        out = next(o for o in engine.run_until_done() if o.request_id == "r")
        probs[quant] = torch.tensor(out.label_logits).softmax(-1)
    assert (probs["int8"] - probs["none"]).abs().max() < 0.05


def test_int8_is_refused_off_the_cpu_and_by_name(weight):
    from inference.engine.config import EngineConfig

    with pytest.raises(ValueError, match="quant"):
        EngineConfig(quant="int4")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU"):
            Int8Weight.quantize(weight.cuda())


def test_worker_reads_the_quant_setting(monkeypatch):
    from inference.worker import WorkerConfig

    monkeypatch.setenv("FINLLM_ENGINE_QUANT", "int8")
    assert WorkerConfig.from_env().quant == "int8"
    monkeypatch.delenv("FINLLM_ENGINE_QUANT")
    assert WorkerConfig.from_env().quant is None


def test_auto_quant_is_int8_only_where_the_cpu_computes_in_float32(tiny_model_dir):
    from inference.engine.config import EngineConfig
    from inference.engine.cpu import default_quant
    from inference.engine.engine import Engine
    from inference.kernels.int8 import Int8Weight

    assert default_quant("cpu", "float32") == "int8"
    assert default_quant("cpu", "bfloat16") == "none"
    assert default_quant("cuda", "float32") == "none"
    layer = Engine(tiny_model_dir, EngineConfig(dtype="float32", quant="auto")).model.layers[0]
    assert isinstance(layer.qkv, Int8Weight)
    assert not isinstance(Engine(tiny_model_dir, EngineConfig(dtype="bfloat16", quant="auto")).model.layers[0].qkv,
                          Int8Weight)
