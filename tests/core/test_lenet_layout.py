"""LeNet-5's channels-last activations are a memory layout only: same outputs and gradients as NCHW."""

from __future__ import annotations

import torch

from sparsetrain.models.lenet import LeNet5


def test_channels_last_activations_change_nothing_but_the_layout() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    x, y = torch.randn(9, 1, 28, 28), torch.randint(0, 10, (9,))
    results = {}
    for channels_last in (False, True):
        model.channels_last = channels_last
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        results[channels_last] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results[True][0], results[False][0], msg="loss")
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-4, atol=1e-6, msg=f"grad of {name}")
    assert LeNet5(dims=1).channels_last is False, "1-D LeNet-5 has no channels-last layout"
