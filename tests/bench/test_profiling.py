"""cnnjax.bench.profiling: HLO parsing and step splitting by hand, and a real traced step whose
operations add up to the step and land on the network's layers."""

import pytest

from cnnjax import models
from cnnjax.bench import profiling
from configs import default

HLO = """HloModule jit_step

%fused_computation (param_0: f32[4,3]) -> f32[4,3] {
  %param_0 = f32[4,3]{1,0} parameter(0)
}

ENTRY %main.9 (x.1: f32[4,3]) -> f32[4,3] {
  %x.1 = f32[4,3]{1,0} parameter(0), metadata={op_name="x"}
  %relu_fusion = f32[4,3]{1,0} fusion(%x.1), kind=kLoop, calls=%fused_computation, metadata={op_name="jit(step)/vmap()/max" stack_frame_id=3}
  ROOT %dot.2 = f32[4,4]{1,0} dot(%relu_fusion, %relu_fusion), lhs_contracting_dims={1}
}
"""  # noqa: E501


def test_hlo_instructions_of_the_entry_computation_only():
    found = profiling.hlo_instructions(HLO)
    assert found == {"x.1": ("f32[4,3]", "x", "parameter"),
                     "relu_fusion": ("f32[4,3]", "max", "fusion"),
                     "dot.2": ("f32[4,4]", "dot", "dot")}  # fmt: skip
    assert "param_0" not in found  # inside a fused computation, not an operation that runs


def test_step_timeline_shares_overlaps_and_charges_waits_to_the_work_in_flight():
    ms = 1_000_000
    events = [(0, 1 * ms, "a"), (1 * ms, 1 * ms, "conv"), (2 * ms, 2 * ms, "t"),
              (5 * ms, 2 * ms, "c"), (6 * ms, 2 * ms, "d"),  # step 1 ends at 10 ms
              (10 * ms, 1 * ms, "a"), (12 * ms, 3 * ms, "c")]  # step 2  # fmt: skip
    steps = profiling.step_timeline(events, "a", asynchronous={"conv"})
    # 4-5 ms nothing runs: the conv's work (started at 1 ms) is what c waits for; 6-7 ms c and
    # d run side by side and share; 8-10 ms (the next step's dispatch) goes to the conv too.
    assert steps[0] == [("a", 0.0, 1.0), ("conv", 1.0, 4.0), ("t", 2.0, 2.0), ("c", 5.0, 1.5),
                        ("d", 6.0, 1.5)]  # fmt: skip
    assert sum(ms for *_, ms in steps[0]) == 10.0  # the step's wall-clock time
    # No asynchronous operation started: the wait goes to the one that ended last.
    assert steps[1] == [("a", 0.0, 2.0), ("c", 2.0, 3.0)]


def test_layer_shapes_name_activations_and_parameters():
    shapes = profiling.layer_shapes(models.REFERENCE_CNN, (28, 28, 1), 8)
    assert shapes["f32[8,26,26,32]"] == "conv1 / relu1"
    assert shapes["f32[8,13,13,32]"] == "maxpool1"
    assert shapes["f32[3,3,32,64]"] == "conv2 kernel"
    assert shapes["f32[8,10]"] == "dense2"
    assert shapes["f32[32,3,3,64]"] == "conv2 kernel (transposed)"  # a gradient as (I, H, W, O)
    assert shapes["f32[32,13,13,8]"] == "maxpool1 (transposed)"  # CHWN


def test_layer_shapes_name_the_parameters_of_nested_layers_by_their_path():
    shapes = profiling.layer_shapes(models.RESNET_SMALL, (28, 28, 1), 8)
    assert shapes["f32[3,3,64,128]"] == "residual3/conv1 kernel"
    assert shapes["f32[1,1,64,128]"] == "residual3/projection kernel"
    assert "residual1/batchnorm1 scale" in shapes["f32[32]"]


@pytest.mark.slow
def test_a_traced_step_adds_up_and_lands_on_the_layers():
    result = profiling.profile_step(default.get_config(), batch_size=8, steps=4, examples=64)
    rows = result["rows"]
    assert result["steps"] >= 2 and result["step_ms"] > 0
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert [r["start_ms"] for r in rows] == sorted(r["start_ms"] for r in rows)
    convs = [r for r in rows if r["op"] == "conv_general_dilated"]
    assert {"conv1 / relu1", "conv2 / relu2"} <= {r["layer"] for r in convs}  # both forwards
    assert any(r["layer"] == "conv2 kernel" for r in rows)  # its gradient
    text = profiling.format_profile(result)
    assert "by layer" in text and "conv1 / relu1" in text
