"""Weight conversion from AdelaiDet, maskrcnn-benchmark and torchvision FCOS checkpoints.

No reference weights can be downloaded here, so each test builds a small module tree
with the reference implementation's attribute names and nesting (Sequential towers
interleaving conv/norm/ReLU, ``body.layerN`` with ``bnN`` and ``downsample``,
``fpn_inner2..4``, ...), fills it with random values, and checks the conversion against
weights placed into fcos_d2's model by hand. torchvision's FCOS is installed: its tests
build ``fcos_resnet50_fpn(weights=None, weights_backbone=None)`` (nothing downloaded);
tests/checkpoint/test_torchvision_oracle.py compares the converted model's detections with it.
"""
import copy
import dataclasses
import math
import pickle

import pytest
import torch
from torch import nn

import fcos_d2  # noqa: F401  (registers FCOS in Detectron2)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from helpers import load_script, tiny_cfg
from fcos_d2.checkpoint import (
    SOURCE_FORMATS,
    ConversionError,
    FCOSCheckpointer,
    coco_contiguous_category_ids,
    convert_reference_checkpoint,
    load_reference_checkpoint,
    recognise_source,
    register_source,
    save_converted_checkpoint,
)

D2_FROZEN_BN_EPS = 1e-5
NUM_CLASSES = 3
FPN_CHANNELS = 64


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the reference module trees (names and nesting only; no forward) --------------------
class MbFrozenBN(nn.Module):
    """maskrcnn-benchmark's FrozenBatchNorm2d: four buffers, y = x * w / sqrt(var) + ..."""

    def __init__(self, n: int):
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.ones(n))


class MbBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), MbFrozenBN(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, bias=False), MbFrozenBN(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), MbFrozenBN(cout)
        if cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), MbFrozenBN(cout))


class RefScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))


def ref_tower(num_convs: int, norm: str, num_levels: int = 5) -> nn.Sequential:
    """AdelaiDet / maskrcnn-benchmark tower: [conv, norm, ReLU] * n in one Sequential."""
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, padding=1))
        if norm == "GN":
            layers.append(nn.GroupNorm(32, FPN_CHANNELS))
        elif norm == "BN":  # AdelaiDet's ModuleListDial: one BatchNorm per level
            layers.append(nn.ModuleList(nn.BatchNorm2d(FPN_CHANNELS) for _ in range(num_levels)))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def ref_head(num_convs: int, norm: str, ctrness_name: str, share_convs: int = 0) -> nn.Module:
    head = nn.Module()
    head.cls_tower = ref_tower(num_convs, norm)
    head.bbox_tower = ref_tower(num_convs, norm)
    if ctrness_name == "ctrness":  # AdelaiDet also has a (possibly empty) share tower
        head.share_tower = ref_tower(share_convs, norm)
    head.cls_logits = nn.Conv2d(FPN_CHANNELS, NUM_CLASSES, 3, padding=1)
    head.bbox_pred = nn.Conv2d(FPN_CHANNELS, 4, 3, padding=1)
    setattr(head, ctrness_name, nn.Conv2d(FPN_CHANNELS, 1, 3, padding=1))
    head.scales = nn.ModuleList(RefScale() for _ in range(5))
    return head


def randomize(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype == torch.int64:
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.05)
    return module


def mb_reference_model() -> nn.Module:
    """maskrcnn-benchmark FCOS, R-50 (3, 4, 6, 3) with tiny widths, GN FPN P3-P7."""
    body = nn.Module()
    body.stem = nn.Module()
    body.stem.conv1, body.stem.bn1 = nn.Conv2d(3, 16, 7, bias=False), MbFrozenBN(16)
    cin = 16
    for i, blocks in enumerate((3, 4, 6, 3), 1):
        mid, cout = 8 * 2 ** (i - 1), 32 * 2 ** (i - 1)
        stage = [MbBottleneck(cin if b == 0 else cout, mid, cout) for b in range(blocks)]
        setattr(body, f"layer{i}", nn.Sequential(*stage))
        cin = cout
    fpn = nn.Module()
    # "R-50-FPN-RETINANET": in_channels_list [0, C3, C4, C5] numbered from 1 -> C3 is 2
    for k, channels in ((2, 64), (3, 128), (4, 256)):
        setattr(fpn, f"fpn_inner{k}", nn.Sequential(
            nn.Conv2d(channels, FPN_CHANNELS, 1, bias=False), nn.GroupNorm(32, FPN_CHANNELS)))
        setattr(fpn, f"fpn_layer{k}", nn.Sequential(
            nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, bias=False), nn.GroupNorm(32, FPN_CHANNELS)))
    fpn.top_blocks = nn.Module()
    fpn.top_blocks.p6 = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, 2, 1)
    fpn.top_blocks.p7 = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 3, 2, 1)
    ref = nn.Module()
    ref.backbone = nn.Module()
    ref.backbone.body, ref.backbone.fpn = body, fpn
    ref.rpn = nn.Module()
    ref.rpn.head = ref_head(2, "GN", "centerness")
    return randomize(ref, seed=1)


def mb_cfg():
    cfg = tiny_cfg(num_classes=NUM_CLASSES)
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 8
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 2
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 2
    cfg.MODEL.FCOS.CHANNELS_LAST = False
    return cfg


def adet_cfg(norm: str, share_convs: int):
    cfg = tiny_cfg(num_classes=NUM_CLASSES)
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.FCOS.NORM = norm
    cfg.MODEL.FCOS.NUM_SHARE_CONVS = share_convs
    cfg.MODEL.FCOS.CHANNELS_LAST = False
    return cfg


def adet_reference_state(model: nn.Module, norm: str, share_convs: int):
    """AdelaiDet OneStageDetector: Detectron2's backbone names, FCOS as proposal_generator."""
    backbone = randomize(copy.deepcopy(model.backbone), seed=2)
    head = randomize(ref_head(1, norm, "ctrness", share_convs), seed=3)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"proposal_generator.fcos_head.{k}": v for k, v in head.state_dict().items()})
    state["pixel_mean"] = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    state["pixel_std"] = torch.ones(3, 1, 1)
    return state, backbone, head


# ---- placing the reference tensors by hand ------------------------------------------------
def copy_(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def place_conv_norm(conv, ref_conv, ref_norm=None, frozen_eps: float = 0.0) -> None:
    copy_(conv.weight, ref_conv.weight)
    if ref_conv.bias is not None:
        copy_(conv.bias, ref_conv.bias)
    if ref_norm is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            if hasattr(ref_norm, name) and getattr(ref_norm, name) is not None:
                value = getattr(ref_norm, name)
                if name == "running_var":
                    value = value - frozen_eps
                copy_(getattr(conv.norm, name), value)


def place_head(head, ref, ctrness_name: str) -> None:
    for ours, theirs in ((head.cls_tower, ref.cls_tower), (head.box_tower, ref.bbox_tower)) + (
        ((head.share_tower, ref.share_tower),) if hasattr(ref, "share_tower") else ()
    ):
        convs = [m for m in theirs if isinstance(m, nn.Conv2d)]
        norms = [m for m in theirs if isinstance(m, (nn.GroupNorm, nn.ModuleList))]
        for k, conv in enumerate(convs):
            copy_(ours.convs[k].weight, conv.weight)
            copy_(ours.convs[k].bias, conv.bias)
        for k, norm in enumerate(norms):
            per_level = list(norm) if isinstance(norm, nn.ModuleList) else [norm]
            for level, n in enumerate(per_level):
                ours.norms[level][k].load_state_dict(n.state_dict())
    for name in ("cls_logits", "bbox_pred"):
        place_conv_norm(getattr(head, name), getattr(ref, name))
    place_conv_norm(head.ctrness, getattr(ref, ctrness_name))
    for ours, theirs in zip(head.scales, ref.scales):
        copy_(ours.scale, theirs.scale)


def place_mb_by_hand(model, ref) -> None:
    bottom_up, body, fpn = model.backbone.bottom_up, ref.backbone.body, ref.backbone.fpn
    place_conv_norm(bottom_up.stem.conv1, body.stem.conv1, body.stem.bn1, D2_FROZEN_BN_EPS)
    for i in range(1, 5):
        for ours, theirs in zip(getattr(bottom_up, f"res{i + 1}"), getattr(body, f"layer{i}")):
            for j in (1, 2, 3):
                place_conv_norm(getattr(ours, f"conv{j}"), getattr(theirs, f"conv{j}"),
                                getattr(theirs, f"bn{j}"), D2_FROZEN_BN_EPS)
            if hasattr(theirs, "downsample"):
                place_conv_norm(ours.shortcut, theirs.downsample[0], theirs.downsample[1],
                                D2_FROZEN_BN_EPS)
    for level, k in ((3, 2), (4, 3), (5, 4)):
        for ours, theirs in (("fpn_lateral", "fpn_inner"), ("fpn_output", "fpn_layer")):
            seq = getattr(fpn, f"{theirs}{k}")
            place_conv_norm(getattr(model.backbone, f"{ours}{level}"), seq[0], seq[1])
    place_conv_norm(model.backbone.top_block.p6, fpn.top_blocks.p6)
    place_conv_norm(model.backbone.top_block.p7, fpn.top_blocks.p7)
    place_head(model.head, ref.rpn.head, "centerness")


# ---- helpers ----------------------------------------------------------------------------
def raw_outputs(model, image: torch.Tensor):
    """Backbone + head outputs on one normalised image (no post-processing)."""
    with torch.no_grad():
        features = model.backbone(image)
        return model.head([features[f] for f in model.head_in_features])


def detections(model, image: torch.Tensor):
    model.postprocessor.score_thresh = 0.0
    model.postprocessor.pre_nms_topk = 50
    with torch.no_grad():
        return model([{"image": image}])[0]["instances"]


def assert_same_model_outputs(a, b) -> None:
    image = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(5)) * 2 - 1
    for outs_a, outs_b in zip(raw_outputs(a, image), raw_outputs(b, image)):
        for x, y in zip(outs_a, outs_b):
            assert torch.equal(x, y)
    det_a, det_b = detections(a, image[0] * 50 + 110), detections(b, image[0] * 50 + 110)
    assert len(det_a) > 0
    assert torch.equal(det_a.pred_boxes.tensor, det_b.pred_boxes.tensor)
    assert torch.equal(det_a.scores, det_b.scores)


def read_converted_file(path: str):
    """The tensors of a file written by save_converted_checkpoint, read without Detectron2."""
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = pickle.load(f)
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
    return {k: torch.as_tensor(v) for k, v in data["model"].items()}


def load_with_checkpointer(model, path: str) -> None:
    """``DetectionCheckpointer(model).load(path)``, then check that the file held exactly
    the model's weights, those of its backbone and head (no missing, unexpected or
    misshapen key), and the model now has them. The losses' running statistic is training
    state, in no reference checkpoint: it keeps its initial value."""
    initial_moving_num_fg = model.losses.moving_num_fg.clone()
    DetectionCheckpointer(model).load(path)
    stored = read_converted_file(path)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("backbone.", "head."))}
    assert sorted(stored) == sorted(state)
    assert torch.equal(model.losses.moving_num_fg, initial_moving_num_fg)
    for key, value in state.items():
        assert stored[key].shape == value.shape, key
        assert torch.equal(stored[key].to(value.dtype), value), key


# ---- tests ------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["pth", "pkl"])
def test_maskrcnn_benchmark_checkpoint_loads_and_equals_hand_placement(tmp_path, ext):
    ref = mb_reference_model()
    checkpoint = {"model": {f"module.{k}": v for k, v in ref.state_dict().items()},
                  "iteration": 90000}
    src = str(tmp_path / "fcos_mb.pth")
    torch.save(checkpoint, src)

    cfg = mb_cfg()
    loaded, by_hand = build_model(cfg).eval(), build_model(cfg).eval()
    state = load_reference_checkpoint(src)
    assert all(k.startswith("module.") for k in state)
    converted, summary = convert_reference_checkpoint(
        state, "maskrcnn_benchmark", model_state=loaded.state_dict()
    )
    out = str(tmp_path / f"converted.{ext}")
    save_converted_checkpoint(converted, out, "maskrcnn_benchmark")
    load_with_checkpointer(loaded, out)

    place_mb_by_hand(by_hand, ref)
    assert_same_model_outputs(loaded, by_hand)

    # every reference tensor was used once; counts per group
    assert summary.num_converted == len(ref.state_dict())
    groups = summary.groups
    assert groups["backbone FPN (lateral + output convs)"] == 6 * 3  # conv + GN w/b
    assert groups["backbone.top_block (P6, P7)"] == 4
    assert groups["head towers: convs"] == 2 * 2 * 2 and groups["head towers: norms"] == 8
    assert groups["head: cls_logits, bbox_pred, ctrness"] == 6 and groups["head.scales"] == 5
    text = summary.format()
    assert "head towers: convs" in text and "running_var lowered" in text


def test_maskrcnn_benchmark_frozen_bn_eps_is_compensated():
    """Detectron2's FrozenBatchNorm2d (sqrt(var + eps)) with the converted statistics gives
    maskrcnn-benchmark's x * w / sqrt(var) + b - mean * w / sqrt(var)."""
    from detectron2.layers import FrozenBatchNorm2d

    ref = mb_reference_model()
    converted, _ = convert_reference_checkpoint(ref.state_dict(), "maskrcnn_benchmark")
    bn = ref.backbone.body.layer1[0].bn2
    d2_bn = FrozenBatchNorm2d(bn.weight.numel())
    d2_bn.load_state_dict({k.rsplit(".", 1)[1]: v for k, v in converted.items()
                           if k.startswith("backbone.bottom_up.res2.0.conv2.norm.")})
    x = torch.randn(2, bn.weight.numel(), 4, 4, dtype=torch.float64)
    scale = bn.weight.double() / bn.running_var.double().sqrt()
    shift = bn.bias.double() - bn.running_mean.double() * scale
    expected = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    torch.testing.assert_close(d2_bn.double()(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm,share_convs", [("GN", 0), ("BN", 1), ("", 0)])
def test_adelaidet_checkpoint_loads_and_equals_hand_placement(tmp_path, norm, share_convs):
    cfg = adet_cfg(norm, share_convs)
    loaded, by_hand = build_model(cfg).eval(), build_model(cfg).eval()
    state, ref_backbone, ref_head_module = adet_reference_state(loaded, norm, share_convs)
    src = str(tmp_path / "fcos_adet.pth")
    torch.save({"model": state, "iteration": 1}, src)

    converted, summary = convert_reference_checkpoint(load_reference_checkpoint(src), "adelaidet")
    out = str(tmp_path / "converted.pth")
    save_converted_checkpoint(converted, out, "adelaidet")
    load_with_checkpointer(loaded, out)
    assert summary.dropped == ["pixel_mean", "pixel_std"]

    by_hand.backbone.load_state_dict(ref_backbone.state_dict())  # same names in AdelaiDet
    place_head(by_hand.head, ref_head_module, "ctrness")
    assert_same_model_outputs(loaded, by_hand)
    assert summary.hints["MODEL.FCOS.NORM"] == norm
    assert summary.hints["MODEL.FCOS.NUM_SHARE_CONVS"] == share_convs
    # GN: weight, bias; BN: weight, bias, running mean/var, num_batches_tracked per level
    expected_norms = {"GN": 2, "BN": 5 * 5, "": 0}[norm] * (2 + share_convs)
    assert summary.groups["head towers: norms"] == expected_norms


def test_hints_describe_a_config_that_matches():
    """The config implied by the weights builds a model the weights fit exactly."""
    ref = mb_reference_model()
    converted, summary = convert_reference_checkpoint(ref.state_dict(), "maskrcnn_benchmark")
    hints = summary.hints
    assert hints["MODEL.RESNETS.DEPTH"] == 50 and hints["MODEL.FCOS.NUM_CLASSES"] == NUM_CLASSES
    assert hints["MODEL.FCOS.NUM_CLS_CONVS"] == 2 and hints["MODEL.FCOS.NORM"] == "GN"
    assert hints["MODEL.FPN.NORM"] == "GN" and hints["MODEL.FCOS.TOP_BLOCK_IN_FEATURE"] == "p5"
    cfg = tiny_cfg()
    cfg.merge_from_list(summary.hint_opts())
    model = build_model(cfg)
    convert_reference_checkpoint(ref.state_dict(), "maskrcnn_benchmark", model.state_dict())


def test_refuses_unknown_missing_and_misshapen_keys():
    state = mb_reference_model().state_dict()
    with pytest.raises(ConversionError, match=r"(?s)1 source key.*rpn\.head\.extra\.weight"):
        convert_reference_checkpoint({**state, "rpn.head.extra.weight": torch.ones(1)},
                                     "maskrcnn_benchmark")
    partial = {k: v for k, v in state.items() if not k.startswith("rpn.head.cls_logits")}
    with pytest.raises(ConversionError, match=r"(?s)missing weight.*head\.cls_logits\.weight"):
        convert_reference_checkpoint(partial, "maskrcnn_benchmark")
    cfg = mb_cfg()
    cfg.MODEL.FCOS.NUM_CLASSES = 7
    with pytest.raises(ConversionError, match=r"(?s)shape mismatch.*head\.cls_logits\.weight"):
        convert_reference_checkpoint(state, "maskrcnn_benchmark", build_model(cfg).state_dict())
    cfg = mb_cfg()
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 1
    with pytest.raises(ConversionError, match=r"(?s)does not have.*cls_tower\.convs\.1\.weight"):
        convert_reference_checkpoint(state, "maskrcnn_benchmark", build_model(cfg).state_dict())
    # an AdelaiDet file read as maskrcnn-benchmark's
    with pytest.raises(ConversionError, match="proposal_generator.fcos_head"):
        convert_reference_checkpoint(
            {"proposal_generator.fcos_head.cls_logits.weight": torch.ones(1)}, "maskrcnn_benchmark"
        )
    deform = {**state, "rpn.head.cls_tower.3.offset.weight": torch.ones(18, 64, 3, 3)}
    deform = {k: v for k, v in deform.items() if not k.startswith("rpn.head.cls_tower.3.weight")}
    with pytest.raises(ConversionError, match="deformable"):
        convert_reference_checkpoint(deform, "maskrcnn_benchmark")
    with pytest.raises(ValueError, match="source must be one of"):
        convert_reference_checkpoint(state, "mmdet")


def test_rename_table_groups_each_module_with_its_shapes():
    """One row per module, as Detectron2 logs its own renames: fcos_d2's names, the
    source's, the shapes."""
    _, summary = convert_reference_checkpoint(
        mb_reference_model().state_dict(), "maskrcnn_benchmark"
    )
    lines = summary.table().splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:4]] == [
        "fcos_d2", "maskrcnn_benchmark", "shapes"
    ]
    rows = [[c.strip() for c in line.split("|")[1:4]] for line in lines[2:]]
    stats = "{weight,bias,running_mean,running_var}"
    assert [
        f"backbone.bottom_up.res2.0.conv1.norm.{stats}", f"backbone.body.layer1.0.bn1.{stats}",
        "(8,) (8,) (8,) (8,)",
    ] in rows
    assert ["head.ctrness.{weight,bias}", "rpn.head.centerness.{weight,bias}",
            "(1,64,3,3) (1,)"] in rows
    # the second conv of a GroupNorm tower is the Sequential's fourth module
    assert ["head.cls_tower.convs.1.{weight,bias}", "rpn.head.cls_tower.3.{weight,bias}",
            "(64,64,3,3) (64,)"] in rows
    # every converted tensor appears once
    assert len(summary.renamed) == summary.num_converted == len(mb_reference_model().state_dict())


def test_a_registered_source_is_converted_by_its_record():
    """A source is one record: the same rules under another name convert the same."""
    fmt = SOURCE_FORMATS["maskrcnn_benchmark"]
    with pytest.raises(ValueError, match="already registered"):
        register_source(fmt)
    register_source(dataclasses.replace(fmt, name="maskrcnn_benchmark_copy"))
    try:
        state = mb_reference_model().state_dict()
        ours, summary = convert_reference_checkpoint(state, "maskrcnn_benchmark_copy")
        theirs, _ = convert_reference_checkpoint(state, "maskrcnn_benchmark")
        assert summary.source == "maskrcnn_benchmark_copy" and list(ours) == list(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    finally:
        SOURCE_FORMATS.pop("maskrcnn_benchmark_copy")


def test_checkpointer_converts_reference_files_at_load(tmp_path):
    """MODEL.WEIGHTS may name the reference file: FCOSCheckpointer recognises it, converts
    it against the model, and loads what the converter writes; fcos_d2 files pass as they
    are."""
    ref = mb_reference_model()
    src = str(tmp_path / "fcos_mb.pth")
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}}, src)
    direct, converted_first = build_model(mb_cfg()).eval(), build_model(mb_cfg()).eval()
    assert recognise_source(torch.load(src)["model"]) == "maskrcnn_benchmark"
    FCOSCheckpointer(direct).load(src)
    out = str(tmp_path / "converted.pth")
    converted, _ = convert_reference_checkpoint(
        load_reference_checkpoint(src), "maskrcnn_benchmark", converted_first.state_dict()
    )
    save_converted_checkpoint(converted, out, "maskrcnn_benchmark")
    load_with_checkpointer(converted_first, out)
    for key, value in converted_first.state_dict().items():
        assert torch.equal(direct.state_dict()[key], value), key
    # an fcos_d2 checkpoint (here the converted one) is not a reference file
    assert recognise_source(read_converted_file(out)) is None
    again = build_model(mb_cfg()).eval()
    FCOSCheckpointer(again).load(out)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in direct.state_dict().items())
    # a model of another config: the error names the file and the keys
    cfg = mb_cfg()
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 1
    with pytest.raises(ConversionError, match=r"(?s)fcos_mb\.pth.*cls_tower\.convs\.1\.weight"):
        FCOSCheckpointer(build_model(cfg)).load(src)


def test_checkpointer_reads_files_saved_before_the_zip_format(tmp_path):
    """A reference file in torch's legacy (non-zip) format cannot be memory-mapped: it is
    read whole and converted the same."""
    state = {"model": mb_reference_model().state_dict()}
    legacy, current = str(tmp_path / "legacy.pth"), str(tmp_path / "zip.pth")
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    torch.save(state, current)
    models = [build_model(mb_cfg()).eval() for _ in range(2)]
    for model, path in zip(models, (legacy, current)):
        FCOSCheckpointer(model).load(path)
    reference = models[1].state_dict()
    assert all(torch.equal(reference[k], v) for k, v in models[0].state_dict().items())


def test_checkpointer_fine_tunes_from_torchvision_weights(tv_state, tmp_path):
    """torchvision's own file (a bare state dict) as MODEL.WEIGHTS of a 3-class model:
    everything but the class logits, which keep the model's initialisation."""
    src = str(tmp_path / "fcos_tv.pth")
    torch.save(tv_state, src)
    cfg = fcos_d2.setup_cfg(TV_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.FCOS.NUM_CLASSES", "3"])
    model = build_model(cfg)
    initial_logits = model.head.cls_logits.bias.clone()
    FCOSCheckpointer(model).load(src)
    full, _ = convert_reference_checkpoint(tv_state, "torchvision")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in full.items() if "cls_logits" not in k)
    assert torch.equal(model.head.cls_logits.bias, initial_logits)


def load_cli():
    return load_script("tools/convert_weights.py")


def test_cli(tmp_path, capsys):
    main = load_cli().main
    src, out = str(tmp_path / "ref.pth"), str(tmp_path / "out" / "fcos.pth")
    torch.save({"model": mb_reference_model().state_dict()}, src)
    opts = ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
            "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.FPN.NORM", "GN",
            "MODEL.FCOS.NUM_CLASSES", "3", "MODEL.FCOS.NUM_CLS_CONVS", "2",
            "MODEL.FCOS.NUM_BOX_CONVS", "2"]
    args = ["--source", "maskrcnn_benchmark", "--input", src, "--output", out,
            "--config-file", "configs/Base-FCOS.yaml"]
    assert main(args + opts) == 0
    printed = capsys.readouterr().out
    assert "backbone.bottom_up (ResNet)" in printed and "all " in printed
    model = build_model(mb_cfg())
    DetectionCheckpointer(model).load(out)
    source_scale = torch.load(src)["model"]["rpn.head.scales.2.scale"]
    assert torch.equal(model.head.scales[2].scale, source_scale)

    assert main(args + opts[:-4]) == 1  # 4 tower convs in the config, 2 in the file
    assert "cls_tower.convs" in capsys.readouterr().err


# ---- torchvision ------------------------------------------------------------------------
TV_CONFIG = "configs/COCO-Detection/FCOS_R_50_torchvision.yaml"


@pytest.fixture(scope="module")
def tv_state():
    """torchvision's FCOS R-50 state dict with random weights (nothing is downloaded)."""
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    model = fcos_resnet50_fpn(weights=None, weights_backbone=None)
    return {k: v.clone() for k, v in randomize(model, seed=11).state_dict().items()}


def tv_model_state(*opts):
    cfg = fcos_d2.setup_cfg(TV_CONFIG, ["MODEL.DEVICE", "cpu", *opts])
    return build_model(cfg).state_dict()


def test_torchvision_every_tensor_is_placed(tv_state):
    converted, summary = convert_reference_checkpoint(tv_state, "torchvision", tv_model_state())
    groups = summary.groups
    # ResNet-50: 53 convs, each with a BatchNorm of 4 tensors; its 53 counters dropped
    assert groups["backbone.bottom_up (ResNet)"] == 53 * 5
    assert summary.dropped == ["backbone.body.*.num_batches_tracked (53)"]
    assert groups["backbone FPN (lateral + output convs)"] == 3 * 2 * 2
    assert groups["backbone.top_block (P6, P7)"] == 4
    assert groups["head towers: convs"] == 2 * 4 * 2 and groups["head towers: norms"] == 16
    assert groups["head: cls_logits, bbox_pred, ctrness"] == 6 and groups["head.scales"] == 0
    assert summary.num_converted + 53 == len(tv_state)
    pairs = {
        "backbone.body.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.body.layer1.0.downsample.1.running_var":
            "backbone.bottom_up.res2.0.shortcut.norm.running_var",
        "backbone.body.layer4.2.bn3.bias": "backbone.bottom_up.res5.2.conv3.norm.bias",
        "backbone.fpn.inner_blocks.0.0.weight": "backbone.fpn_lateral3.weight",
        "backbone.fpn.layer_blocks.2.0.bias": "backbone.fpn_output5.bias",
        "backbone.fpn.extra_blocks.p7.weight": "backbone.top_block.p7.weight",
        "head.classification_head.conv.9.weight": "head.cls_tower.convs.3.weight",
        "head.regression_head.conv.10.bias": "head.box_tower.norms.0.3.bias",
        "head.regression_head.bbox_reg.weight": "head.bbox_pred.weight",
        "head.regression_head.bbox_ctrness.bias": "head.ctrness.bias",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(converted[ours], tv_state[theirs]), theirs
    hints = summary.hints
    assert hints["MODEL.RESNETS.DEPTH"] == 50 and hints["MODEL.RESNETS.NORM"] == "FrozenBN"
    assert hints["MODEL.RESNETS.STRIDE_IN_1X1"] is False and hints["INPUT.FORMAT"] == "RGB"
    assert hints["MODEL.FCOS.USE_SCALE"] is False and hints["MODEL.FCOS.NUM_CLASSES"] == 80
    assert hints["MODEL.PIXEL_STD"] == [58.395, 57.12, 57.375]
    # the behaviour options, as the shipped config sets them
    cfg = fcos_d2.setup_cfg(TV_CONFIG)
    for key in ("LOCATION_OFFSET", "SPACING_FROM_INPUT", "INFERENCE_TH_TEST",
                "THRESH_ON_FINAL_SCORE", "REMOVE_EMPTY_BOXES"):
        assert hints[f"MODEL.FCOS.{key}"] == cfg.MODEL.FCOS[key], key


def test_torchvision_classes_become_detectron2_coco_classes(tv_state):
    """Output k of torchvision's classifier is COCO category id k; Detectron2's class c is
    the c-th "thing" of COCO_CATEGORIES. Checked by name on both sides."""
    from detectron2.data import MetadataCatalog
    from torchvision.models.detection import FCOS_ResNet50_FPN_Weights

    tv_names = FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # 91, by category id
    d2_names = MetadataCatalog.get("coco_2017_val").thing_classes  # 80, contiguous
    converted, summary = convert_reference_checkpoint(tv_state, "torchvision")
    weight, bias = converted["head.cls_logits.weight"], converted["head.cls_logits.bias"]
    assert weight.shape[0] == 80 and bias.shape == (80,)
    for name in ("person", "bicycle", "stop sign", "toothbrush"):
        ours, theirs = d2_names.index(name), tv_names.index(name)
        tv_weight = tv_state["head.classification_head.cls_logits.weight"]
        assert torch.equal(weight[ours], tv_weight[theirs])
        assert bias[ours] == tv_state["head.classification_head.cls_logits.bias"][theirs]
    # by index: person is id 1 and class 0; stop sign id 13 (after the unused id 12) class
    # 11; toothbrush id 90 and class 79
    assert [coco_contiguous_category_ids()[c] for c in (0, 11, 79)] == [1, 13, 90]
    assert [tv_names[i] for i in coco_contiguous_category_ids()] == list(d2_names)
    assert "91 outputs" in summary.format()

    kept, _ = convert_reference_checkpoint(tv_state, "torchvision", num_classes=91)
    assert torch.equal(kept["head.cls_logits.weight"],
                       tv_state["head.classification_head.cls_logits.weight"])


def test_torchvision_fpn_keys_before_torchvision_0_13(tv_state):
    """Files saved before torchvision 0.13 (e.g. the published .pth itself) name the FPN
    convs ``inner_blocks.<k>.weight``, without the ``.0`` of Conv2dNormActivation."""
    old = {k.replace("_blocks.0.0.", "_blocks.0.").replace("_blocks.1.0.", "_blocks.1.")
           .replace("_blocks.2.0.", "_blocks.2."): v for k, v in tv_state.items()}
    assert "backbone.fpn.inner_blocks.1.weight" in old
    new_converted, _ = convert_reference_checkpoint(tv_state, "torchvision")
    old_converted, _ = convert_reference_checkpoint(old, "torchvision")
    assert sorted(new_converted) == sorted(old_converted)
    assert all(torch.equal(new_converted[k], old_converted[k]) for k in new_converted)


def test_torchvision_cli_fine_tuning_keeps_all_but_the_class_logits(tv_state, tmp_path, capsys):
    main = load_cli().main
    src, out = str(tmp_path / "fcos_tv.pth"), str(tmp_path / "fcos_3.pth")
    torch.save(tv_state, src)
    args = ["--source", "torchvision", "--input", src, "--output", out,
            "--config-file", TV_CONFIG, "MODEL.FCOS.NUM_CLASSES", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "91 classes" in printed and "fine-tuning" in printed
    cfg = fcos_d2.setup_cfg(TV_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.FCOS.NUM_CLASSES", "3"])
    model = build_model(cfg)
    load_with_checkpointer(model, out)
    state = model.state_dict()
    full, _ = convert_reference_checkpoint(tv_state, "torchvision")
    others = [k for k in full if not k.startswith("head.cls_logits.")]
    assert len(others) == len(full) - 2
    assert all(torch.equal(state[k], full[k]) for k in others)
    # the class logits are the model's initialisation: bias -log((1 - p) / p), p = 0.01
    assert state["head.cls_logits.weight"].shape[0] == 3
    torch.testing.assert_close(state["head.cls_logits.bias"],
                               torch.full((3,), -math.log(99.0)), rtol=0, atol=1e-6)


def test_torchvision_refuses_other_models(tv_state):
    from torchvision.models.detection import retinanet_resnet50_fpn
    from torchvision.models import resnet50

    retinanet = retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    with pytest.raises(ConversionError, match=r"(?s)missing weight.*head\.ctrness\.weight"):
        convert_reference_checkpoint(retinanet, "torchvision")
    classifier = {f"backbone.body.{k}": v for k, v in resnet50().state_dict().items()}
    unmapped_fc = r"(?s)map to no fcos_d2 weight.*backbone\.body\.fc\.weight"
    with pytest.raises(ConversionError, match=unmapped_fc):
        convert_reference_checkpoint(classifier, "torchvision")
    # a torchvision file read as another source's, and the other way round
    with pytest.raises(ConversionError, match="--source torchvision"):
        convert_reference_checkpoint(tv_state, "maskrcnn_benchmark")
    with pytest.raises(ConversionError, match="--source maskrcnn_benchmark"):
        convert_reference_checkpoint(mb_reference_model().state_dict(), "torchvision")
    # the model of another config
    with pytest.raises(ConversionError, match=r"(?s)shape mismatch.*res2\.0\.conv1\.weight"):
        convert_reference_checkpoint(
            tv_state, "torchvision", tv_model_state("MODEL.RESNETS.WIDTH_PER_GROUP", "32")
        )
