"""BatchNorm folding at inference: same outputs, rebuilt when the weights change."""
import torch
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model

from fcos_d2.modeling.fold_bn import (
    FrozenBatchNormFoldedConv2d,
    fold_batchnorm,
    fold_frozen_batchnorm_per_forward,
)
from helpers import make_inputs, tiny_cfg


def _randomize_bn_statistics(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def test_fold_single_conv_by_hand():
    # 1x1 conv, one channel: y = bn(2x + 1) with mean 3, var 4 - eps, weight 5, bias 6
    conv = Conv2d(1, 1, 1, bias=True, norm=nn.BatchNorm2d(1))
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        conv.norm.running_mean.fill_(3.0)
        conv.norm.running_var.fill_(4.0 - conv.norm.eps)
        conv.norm.weight.fill_(5.0)
        conv.norm.bias.fill_(6.0)
    conv.eval()
    assert fold_batchnorm(conv) == 1
    assert conv.norm is None
    # scale = 5 / 2 = 2.5: weight 2 * 2.5 = 5, bias (1 - 3) * 2.5 + 6 = 1
    assert conv.weight.item() == 5.0 and conv.bias.item() == 1.0
    assert conv(torch.tensor([[[[2.0]]]])).item() == 11.0  # bn(2*2+1) = (5-3)*2.5+6


def test_fold_keeps_outputs_and_skips_other_norms():
    convs = nn.Sequential(
        Conv2d(3, 8, 3, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=nn.ReLU()),
        Conv2d(8, 8, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(8)),
        Conv2d(8, 8, 3, padding=1, norm=nn.GroupNorm(4, 8)),
        Conv2d(8, 8, 1),
    )
    _randomize_bn_statistics(convs)
    convs.eval()
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        expected = convs(x)
        assert fold_batchnorm(convs) == 2
        got = convs(x)
    assert isinstance(convs[2].norm, nn.GroupNorm)  # data-dependent: not foldable
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_training_mode_batchnorm_is_not_folded():
    conv = Conv2d(3, 4, 1, bias=False, norm=nn.BatchNorm2d(4))
    conv.train()
    assert fold_batchnorm(conv) == 0
    assert isinstance(conv.norm, nn.BatchNorm2d)


def _fcos(fold: bool):
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.FOLD_BN_AT_TEST = fold
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # random weights: keep every candidate
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomize_bn_statistics(model.backbone)
    return model.eval()


def test_fcos_folded_inference_matches_unfolded(one_thread):
    folded, plain = _fcos(True), _fcos(False)
    plain.load_state_dict(folded.state_dict())
    inputs = make_inputs([[[10, 10, 60, 50]]], size=(96, 128))
    with torch.no_grad():
        assert folded.inference_backbone() is not folded.backbone
        assert plain.inference_backbone() is plain.backbone
        a = folded(inputs)[0]["instances"]
        b = plain(inputs)[0]["instances"]
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    # the folded copy is not part of the checkpoint
    assert set(folded.state_dict()) == set(plain.state_dict())


def test_folded_copy_follows_weight_changes(one_thread):
    model = _fcos(True)
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        first = model.inference_backbone()
        assert model.inference_backbone() is first  # cached while weights are unchanged
        bn = model.backbone.bottom_up.stem.conv1.norm
        bn.running_mean.add_(1.0)  # an in-place change, like load_state_dict or an SGD step
        second = model.inference_backbone()
        assert second is not first
        expected = model.backbone(x)["p3"]
        torch.testing.assert_close(second(x)["p3"], expected, rtol=1e-4, atol=1e-4)
    # the choice follows the mode, not the autograd state: eval mode runs the folded copy
    assert model.inference_backbone() is second
    model.train()
    assert model._folded_backbone._folded is None
    assert model.inference_backbone() is model.backbone


def test_tracing_records_the_real_backbone(one_thread):
    """Tracers (fvcore's FLOP counter, torch.jit.trace export) record the model's own
    backbone, not the folded copy, whose weights are outside the module tree."""
    model = _fcos(True)

    class P3(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image):
            return self.model.inference_backbone()(image)["p3"]

    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        traced = torch.jit.trace(P3(), (x,), check_trace=False)
        expected = model.backbone(x)["p3"]
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(P3()(x), expected, rtol=1e-4, atol=1e-4)  # the folded copy


def _count_calls(modules):
    calls = []
    for m in modules:
        m.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_frozen_bn_folded_per_forward_by_hand():
    """conv 1x1 (weight 2, bias 1) + FrozenBN (mean 3, var 4 - eps, weight 5, bias 6):
    y = (2x + 1 - 3) * 2.5 + 6; dy/dweight = 2.5 x, dy/dbias = 2.5."""
    model = nn.Sequential(Conv2d(1, 1, 1, bias=True, norm=FrozenBatchNorm2d(1)))
    norm = model[0].norm
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(1.0)
        norm.running_mean.fill_(3.0)
        norm.running_var.fill_(4.0 - norm.eps)
        norm.weight.fill_(5.0)
        norm.bias.fill_(6.0)
    keys = set(model.state_dict())
    assert fold_frozen_batchnorm_per_forward(model) == 1
    assert isinstance(model[0], FrozenBatchNormFoldedConv2d) and model[0].norm is norm
    assert set(model.state_dict()) == keys
    calls = _count_calls([norm])
    y = model(torch.tensor([[[[2.0]]]], requires_grad=True))
    y.backward()
    assert y.item() == 11.0 and not calls  # the norm's own forward never ran
    assert model[0].weight.grad.item() == 5.0 and model[0].bias.grad.item() == 2.5


def _frozen_bn_fcos(fold_frozen_bn: bool):
    cfg = tiny_cfg()
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.FCOS.FOLD_FROZEN_BN = fold_frozen_bn
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomize_bn_statistics(model.backbone)
    return model.train()


def test_fcos_training_with_frozen_bn_folded_matches_unfolded(one_thread):
    """The default folds the backbone's FrozenBatchNorms into the kernels in training too:
    no FrozenBatchNorm forward runs, and losses and gradients equal the unfolded model's."""
    folded = _frozen_bn_fcos(tiny_cfg().MODEL.FCOS.FOLD_FROZEN_BN)  # the default
    plain = _frozen_bn_fcos(False)
    plain.load_state_dict(folded.state_dict())
    assert set(folded.state_dict()) == set(plain.state_dict())
    norms = [m for m in folded.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 20  # ResNet-18: stem 1 + 8 blocks x 2 + 3 shortcuts
    calls = _count_calls(norms)
    inputs = make_inputs([[[10, 10, 60, 50]], [[20, 30, 90, 80]]], size=(96, 128))
    losses_folded, losses_plain = folded(inputs), plain(inputs)
    assert not calls
    for key, value in losses_plain.items():
        torch.testing.assert_close(losses_folded[key], value, rtol=1e-4, atol=1e-5)
    sum(losses_folded.values()).backward()
    sum(losses_plain.values()).backward()
    for name in ("bottom_up.res3.0.conv1.weight", "bottom_up.res5.1.conv2.weight"):
        a = folded.backbone.get_parameter(name).grad
        b = plain.backbone.get_parameter(name).grad
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())
    assert folded.backbone.bottom_up.stem.conv1.weight.grad is None  # FREEZE_AT 2
