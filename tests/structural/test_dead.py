"""Dead units of an unstructured-sparse model (no non-zero input weight, or nothing reads them) are removed
exactly: constants folded into the consumers' biases, units whose constant would fold only approximately kept."""

from __future__ import annotations

import timm
import torch
from torch import nn

import sparsetrain.models  # noqa: F401  (registers lenet5, lenet300_100)
from sparsetrain.structural.dead import dead_units, remove_dead_units
from sparsetrain.structural.graph import build_channel_groups

ATOL = 1e-5


def nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


def zero_(tensor: torch.Tensor, index: list[int], dim: int = 0) -> None:
    with torch.no_grad():
        tensor.index_fill_(dim, torch.tensor(index), 0)


def test_lenet300_dead_units_are_removed_and_the_output_kept() -> None:
    torch.manual_seed(0)
    model = timm.create_model("lenet300_100", num_classes=10, in_chans=1, img_size=8).eval()
    with torch.no_grad():
        model.fc1.bias[:10] = 0.5  # input-dead units with a constant relu(0.5) output: must be folded, not dropped
    zero_(model.fc1.weight, list(range(10)))      # fc1 0-9: no input
    zero_(model.fc2.weight, list(range(10, 15)), dim=1)  # fc1 10-14: unread
    zero_(model.fc2.weight, [3])                  # fc2 3: no input
    x = torch.randn(16, 1, 8, 8)
    result = remove_dead_units(model, x[:4])
    assert result.removed == {"fc1": 15, "fc2": 1}
    assert result.model.fc1.out_features == 285 and result.model.fc2.in_features == 285
    assert result.model.head.in_features == 99
    assert max_diff(result.model, model, x) <= ATOL
    assert nonzero(result.model) < nonzero(model)
    assert model.fc1.out_features == 300, "the input model must be left unchanged"


def test_lenet5_dead_channels_and_a_second_round() -> None:
    torch.manual_seed(1)
    model = timm.create_model("lenet5", num_classes=10, in_chans=1, img_size=28).eval()
    zero_(model.conv2.weight, [0, 1, 2])           # conv2 0-2: no input (constant through pool → flatten → fc1)
    zero_(model.conv1.weight, [4])                 # conv1 4: no input (conv2 has no padding: exact fold)
    fc1_cols = model.fc1.weight.shape[1] // 50
    zero_(model.fc1.weight, list(range(5 * fc1_cols, 6 * fc1_cols)), dim=1)  # conv2 5: unread
    zero_(model.head.weight, [7], dim=1)           # fc1 7: unread
    with torch.no_grad():  # fc1 8 reads only conv2 0-2: dead once they are removed (round 2)
        model.fc1.weight[8] = 0
        model.fc1.weight[8, :3 * fc1_cols] = 1.0
    x = torch.randn(8, 1, 28, 28)
    result = remove_dead_units(model, x[:4])
    assert result.removed == {"conv1": 1, "conv2": 4, "fc1": 2}  # fc1 7 (round 1) and 8 (round 2)
    assert result.rounds == 3  # the third finds nothing more
    assert max_diff(result.model, model, x) <= ATOL
    second = remove_dead_units(result.model, x[:4])
    assert second.removed == {}, "nothing dead is left"


def test_dead_units_reports_both_kinds() -> None:
    torch.manual_seed(2)
    model = timm.create_model("lenet300_100", num_classes=10, in_chans=1, img_size=8).eval()
    zero_(model.fc2.weight, [1, 2])
    zero_(model.head.weight, [2, 5], dim=1)
    group = next(g for g in build_channel_groups(model, torch.randn(2, 1, 8, 8)) if g.id == "fc2")
    dead = dead_units(model, group)
    assert dead.no_input.tolist() == [1, 2] and dead.unread.tolist() == [2, 5]


class PaddedConsumer(nn.Module):
    """conv1 (no padding) → ReLU → conv2 (zero padding 1) → global pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


def test_zero_padded_conv_consumer_keeps_constant_channels() -> None:
    """A constant seen through a zero-padded conv differs at the borders: such channels stay; unread ones go."""
    torch.manual_seed(3)
    model = PaddedConsumer().eval()
    with torch.no_grad():
        model.conv1.bias[:2] = 0.7
        model.conv1.bias[2] = -0.7  # relu(-0.7) = 0: carries nothing, removable exactly
    zero_(model.conv1.weight, [0, 1, 2])
    zero_(model.conv2.weight, [5], dim=1)  # conv1 5: unread
    x = torch.randn(4, 3, 12, 12)
    result = remove_dead_units(model, x[:2])
    assert result.removed == {"conv1": 2}
    assert result.kept_unfoldable == {"conv1": 2}
    assert result.model.conv1.out_channels == 4
    assert max_diff(result.model, model, x) <= ATOL
