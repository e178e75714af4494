"""The per-layer and per-pass host terms of a fitted device profile (issue 27, item 3)."""

import pytest

from treeopt.core.tree import Tree
from treeopt.cost.arch import ArchShape, get_arch
from treeopt.cost.drafts import draft_pass_tokens, predict_draft_step
from treeopt.cost.gpus import GPUS
from treeopt.cost.roofline import (
    DeviceProfile,
    ceilings,
    fit_pass_overheads,
    predict_step_latency,
)
from treeopt.errors import TreeoptError

PLAIN = DeviceProfile("x", 1.0, 40.0, kernel_overhead_us=1.0)
HOSTY = DeviceProfile("x", 1.0, 40.0, kernel_overhead_us=1.0, layer_overhead_us=200.0,
                      pass_overhead_us=3000.0)
TOKENY = DeviceProfile("x", 1.0, 40.0, kernel_overhead_us=1.0, layer_overhead_us=200.0,
                       pass_overhead_us=3000.0, token_layer_overhead_us=10.0)


def test_terms_add_per_layer_and_per_pass():
    arch = get_arch("llama-100m")  # 6 layers
    plain = predict_step_latency(arch, None, 2, 256, 8, 4, PLAIN, medusa_heads=0)
    hosty = predict_step_latency(arch, None, 2, 256, 8, 4, HOSTY, medusa_heads=0)
    assert hosty - plain == pytest.approx(6 * 200e-6 + 3000e-6)
    tokeny = predict_step_latency(arch, None, 2, 256, 8, 4, TOKENY, medusa_heads=0)
    assert tokeny - hosty == pytest.approx(6 * 2 * 8 * 10e-6)  # layers x batch x tokens


def test_datasheet_gpus_have_no_host_terms():
    a100 = GPUS["a100-80gb-pcie"]
    ceiling = ceilings(a100, 2)
    assert (ceiling.layer_overhead_s, ceiling.pass_overhead_s,
            ceiling.token_layer_overhead_s) == (0.0, 0.0, 0.0)


def test_draft_step_charges_every_pass():
    target, draft = get_arch("llama-100m"), get_arch("llama-68m")
    tree = Tree.from_paths([(0,), (0, 0), (0, 0, 0), (1,)], num_heads=3)
    assert draft_pass_tokens(tree) == [5, 1, 1]
    plain = predict_draft_step(target, draft, tree, None, 1, 256, 4, PLAIN)
    hosty = predict_draft_step(target, draft, tree, None, 1, 256, 4, HOSTY)
    # 3 draft passes of 2 layers, 1 verification of 6 layers
    assert hosty.draft_s - plain.draft_s == pytest.approx(3 * (2 * 200e-6 + 3000e-6))
    assert hosty.verify_s - plain.verify_s == pytest.approx(6 * 200e-6 + 3000e-6)


def test_fit_recovers_known_terms():
    arch_a = ArchShape("a", 256, 688, 6, 4, 4, 64, 1000)
    arch_b = ArchShape("b", 256, 688, 2, 4, 4, 64, 1000)
    steps = []
    for arch in (arch_a, arch_b):
        for batch, q in ((1, 1), (4, 1), (2, 16)):
            matmul = predict_step_latency(arch, None, batch, 64, q, 4, PLAIN, medusa_heads=0)
            measured = predict_step_latency(arch, None, batch, 64, q, 4, TOKENY, medusa_heads=0)
            steps.append({"measured_s": measured, "matmul_s": matmul, "layers": arch.num_layers,
                          "passes": 1, "token_layers": arch.num_layers * batch * q})
    fitted = fit_pass_overheads(PLAIN, steps)
    assert fitted.layer_overhead_us == pytest.approx(200.0, rel=1e-6)
    assert fitted.pass_overhead_us == pytest.approx(3000.0, rel=1e-6)
    assert fitted.token_layer_overhead_us == pytest.approx(10.0, rel=1e-6)
    assert fitted.fit["pass_overheads"]["rms_relative_error_after"] == pytest.approx(0, abs=1e-9)
    assert fitted.peak_tflops == PLAIN.peak_tflops  # the matmul fit is kept


def test_fit_never_goes_negative():
    # measured below the matmul prediction: no host time to add
    steps = [{"measured_s": 1.0, "matmul_s": 1.2, "layers": 6, "passes": 1},
             {"measured_s": 2.0, "matmul_s": 2.5, "layers": 2, "passes": 1}]
    fitted = fit_pass_overheads(PLAIN, steps)
    assert (fitted.layer_overhead_us, fitted.pass_overhead_us,
            fitted.token_layer_overhead_us) == (0.0, 0.0, 0.0)


def test_profile_json_round_trip_and_checks():
    assert DeviceProfile.from_json(TOKENY.to_json()) == TOKENY
    old = PLAIN.to_json()
    # a profile written before these terms
    del old["layer_overhead_us"], old["pass_overhead_us"], old["token_layer_overhead_us"]
    assert DeviceProfile.from_json(old) == PLAIN
    with pytest.raises(TreeoptError, match="pass_overhead_us must be >= 0"):
        DeviceProfile.from_json({**HOSTY.to_json(), "pass_overhead_us": -1.0})
    with pytest.raises(TreeoptError, match="two timed steps"):
        fit_pass_overheads(PLAIN, [])
