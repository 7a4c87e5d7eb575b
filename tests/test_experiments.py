"""The block types' variance-shift experiment script: its measurement leaves the model alone and sees the shift."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("sklearn")

from effdrop_triton.experiments import block_types as experiment  # noqa: E402
from effdrop_triton.models import preresnet  # noqa: E402


@pytest.mark.parametrize("block_type", [0, 2])
def test_measure_shift_sees_dropout_and_leaves_model_alone(block_type):
    torch.manual_seed(0)
    model = preresnet(depth=11, num_classes=10, in_channels=1, block_type=block_type, drop_type="neuron",
                      drop_rate=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = DataLoader(TensorDataset(torch.randn(64, 1, 32, 32), torch.zeros(64, dtype=torch.long)), batch_size=32)
    ratios = experiment.measure_shift(model, loader)
    assert len(ratios) == 3  # one dropout per bottleneck, three bottlenecks: three receiving norms
    # half the activations dropped and the rest doubled: train-mode variance well above eval-mode's
    assert all(0.0 < r < 0.9 for r in ratios), ratios
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics untouched
    assert not any(getattr(m, "track_stats", False) for m in model.modules())


def test_script_reports_one_row_per_configuration(capsys):
    args = experiment.get_args_parser().parse_args(
        ["--epochs", "0", "--block-types", "1", "--drop-types", "channel", "--drop-rate", "0.3"])
    rows = experiment.main(args)
    assert [(r[0], r[1]) for r in rows] == [(1, "channel")]
    assert "| 1 (norm-ReLU-conv-drop) | channel |" in capsys.readouterr().out
