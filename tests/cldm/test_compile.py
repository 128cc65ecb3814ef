"""ControlLDM.compile_networks: torch.compile of the ControlNet and the UNet matches eager and keeps the keys."""

import copy

import pytest
import torch

from bench.gpu_check.common import wake_zero_inits


@pytest.mark.slow
@pytest.mark.xdist_group("inductor_tiny_training")  # one worker, so the second test reads the graphs it compiled
def test_compiled_networks_match_eager_in_forward_and_backward(tiny_model):
    wake_zero_inits(tiny_model)  # non-zero outputs and gradients to compare
    eager = tiny_model.train()
    compiled = copy.deepcopy(eager)
    compiled.compile_networks()
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)  # B×C×h×w
    t = torch.tensor([10, 900])
    hint = (torch.rand(2, 3, 64, 64, generator=generator) > 0.9).float()  # B×3×H×W
    context = eager.get_learned_conditioning(["a red circle", ""])  # B×L×D
    cond = {"c_concat": [hint], "c_crossattn": [context]}
    outputs, grads = [], []
    for model in (eager, compiled):
        eps = model.apply_model(x, t, cond)  # B×C×h×w
        eps.square().mean().backward()
        outputs.append(eps.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.control_model.parameters()]))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)
    assert outputs[0].abs().max() > 0 and grads[0].abs().max() > 0
