"""Mixed precision (fcos_d2.modeling.execution): the rule table, float32 numerics under
autocast, TEST.AMP inference (SOLVER.AMP training: tests/engine/test_amp_trainer.py)."""

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from helpers import DEVICES, REDUCED_PRECISION, conv_output_dtypes, make_inputs, tiny_cfg
from fcos_d2.modeling import execution
from fcos_d2.modeling.execution import amp_dtype, precision_modes

XEON_AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
EPYC_AVX512 = frozenset({"avx2", "avx512f", "avx512_bf16"})
EPYC_AVX2 = frozenset({"avx2"})
BOXES = [[[10, 12, 60, 70], [30, 5, 90, 40]], [[0, 0, 40, 96]]]


# ---- the rule table ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "device, flags, training, expected",
    [
        ("cpu", XEON_AMX, False, torch.bfloat16),  # AMX: bfloat16 at the hardware's rate
        ("cpu", EPYC_AVX512, False, torch.bfloat16),  # avx512_bf16 without AMX: faster too
        ("cpu", EPYC_AVX2, False, None),  # emulated bfloat16: slower than float32
        ("cpu", XEON_AMX, True, torch.bfloat16),
        ("cpu", EPYC_AVX2, True, torch.bfloat16),  # SOLVER.AMP on a CPU: bfloat16
        ("cuda", frozenset(), True, torch.float16),  # Detectron2's AMP: float16
        ("cuda:1", frozenset(), False, None),  # not measured: float32
        ("mps", frozenset(), False, None),
    ],
)
def test_auto_precision_per_device_and_cpu(device, flags, training, expected):
    assert amp_dtype("auto", device, training, flags) == expected


@pytest.mark.parametrize(
    "cap, expected",
    [
        (None, XEON_AMX),
        ("AVX512_CORE_BF16", XEON_AMX - {"amx_tile", "amx_bf16"}),
        ("avx512_core", XEON_AMX - {"amx_tile", "amx_bf16", "avx512_bf16"}),
        ("AVX2", EPYC_AVX2),
        ("ALL", XEON_AMX),
    ],
)
def test_an_instruction_set_cap_is_the_emulated_cpu(monkeypatch, cap, expected):
    """ONEDNN_MAX_CPU_ISA (how another CPU kind is emulated) removes what it caps from the
    flags the rules see, so "auto" chooses as on that kind."""
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert execution.usable_cpu_flags(XEON_AMX) == expected
    monkeypatch.setattr(execution, "cpu_flags", lambda: XEON_AMX)
    emulating_avx2 = cap == "AVX2"
    with_bf16 = "avx512_bf16" in expected
    assert amp_dtype("auto", "cpu", False) == (torch.bfloat16 if with_bf16 else None)
    description = execution.cpu_description()
    assert ("; emulating " in description) == (expected != XEON_AMX), description
    assert description.endswith("; emulating AVX2, no AMX") == emulating_avx2, description


def test_aten_cpu_capability_below_avx512_rules_out_avx512(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert execution.usable_cpu_flags(XEON_AMX) == EPYC_AVX2
    assert execution.usable_cpu_flags(EPYC_AVX2) == EPYC_AVX2


def test_explicit_precisions_and_a_bad_value():
    assert amp_dtype("float16", "cpu", False, EPYC_AVX2) == torch.float16
    assert amp_dtype("BFloat16", "cuda", True) == torch.bfloat16
    assert amp_dtype("float32", "cpu", False, XEON_AMX) is None
    with pytest.raises(ValueError, match="TEST.AMP.PRECISION.*'half'"):
        amp_dtype("half", "cpu", False, key="TEST.AMP.PRECISION")


def test_config_keys_pick_the_dtypes(monkeypatch):
    monkeypatch.setattr(execution, "cpu_flags", lambda: XEON_AMX)
    cfg = tiny_cfg()
    cfg.TEST.AMP.ENABLED = True
    assert precision_modes(cfg) == (None, torch.bfloat16)  # SOLVER.AMP off by default
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.AMP.PRECISION = "float16"
    cfg.TEST.AMP.ENABLED = False
    assert precision_modes(cfg) == (torch.float16, None)
    monkeypatch.setattr(execution, "cpu_flags", lambda: EPYC_AVX2)
    cfg.TEST.AMP.ENABLED = True
    assert precision_modes(cfg) == (torch.float16, None)  # "auto" inference: float32 on AVX2


def test_defaults_are_auto_inference_and_float32_training():
    import fcos_d2

    cfg = fcos_d2.setup_cfg()
    assert (cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION) == (False, "auto")
    assert (cfg.TEST.AMP.ENABLED, cfg.TEST.AMP.PRECISION) == (True, "auto")


# ---- float32 numerics under autocast ----------------------------------------------------
def _model(device="cpu", **opts):
    cfg = tiny_cfg(device=device)
    for key, value in opts.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    torch.manual_seed(0)
    return build_model(cfg)


def _spread_head(model, scale=40.0):
    """Random head weights with spread logits, so that many locations pass thresholds."""
    torch.manual_seed(1)
    with torch.no_grad():
        for conv in (model.head.cls_logits, model.head.ctrness):
            conv.weight.normal_(0, scale / conv.weight[0].numel() ** 0.5 / 10)
            conv.bias.zero_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_under_autocast_equal_float32_losses_of_the_same_outputs(
    dtype, device, one_thread
):
    """The head's outputs in reduced precision: the losses computed under autocast equal,
    exactly, the float32 losses of the same values (upcast) computed without autocast."""
    model = _model(device).train()
    inputs = make_inputs(BOXES)
    images = model.preprocess_image(inputs)
    gt = [x["instances"].to(device) for x in inputs]
    with torch.no_grad():
        features = model.backbone(images.tensor)
        maps = [features[f] for f in model.in_features]
        head = model.head(maps)
    low = tuple([m.to(dtype) for m in level] for level in head)
    size = tuple(images.tensor.shape[-2:])
    from fcos_d2.modeling.pipeline import FCOSPredictions

    def predictions(outputs):
        return FCOSPredictions.from_head(maps, model.strides, outputs, 0.5, size)

    with EventStorage():
        with torch.autocast(device, dtype=dtype):
            under_autocast = model.losses_of(predictions(low), gt)
        upcast = tuple([m.float() for m in level] for level in low)
        reference = model.losses_of(predictions(upcast), gt)
    assert set(under_autocast) == set(reference)
    for name in reference:
        assert under_autocast[name].dtype == torch.float32
        assert torch.equal(under_autocast[name], reference[name]), name


@pytest.mark.parametrize("device", DEVICES)
def test_predictions_leave_autocast_as_float32(device, one_thread):
    model = _model(device).train()
    images = model.preprocess_image(make_inputs(BOXES))
    with torch.no_grad(), torch.autocast(device, dtype=REDUCED_PRECISION[device]):
        features = model.backbone(images.tensor)
        raw = model.head([features[f] for f in model.in_features])
        predictions = model.predict(features, tuple(images.tensor.shape[-2:]))
    assert raw[0][0].dtype == REDUCED_PRECISION[device]  # the network ran in it
    for maps in (predictions.logits, predictions.box_dists, predictions.ctrness):
        assert all(m.dtype == torch.float32 for m in maps)


def test_overflowed_head_outputs_keep_the_losses_finite():
    """float16 overflow shows up as inf in the head's outputs: the losses and their
    gradients stay finite (inf bounded to float16's range), NaN stays visible."""
    from fcos_d2.modeling.losses import FCOSLosses

    losses = FCOSLosses(num_classes=2)
    logits = torch.zeros(1, 4, 2)
    logits[0, 0, 1] = float("inf")  # positive location, its class
    logits[0, 1, 0] = float("inf")  # background location
    logits[0, 2, 1] = -float("inf")  # positive location, its class, the wrong way
    box = torch.ones(1, 4, 4)
    box[0, 0] = float("inf")  # a positive's distances overflowed
    ctr = torch.tensor([[float("inf"), 0.0, -float("inf"), 0.0]])
    labels = torch.tensor([[1, 2, 1, 2]])
    reg = torch.tensor([[[1.0, 1.0, 2.0, 2.0], [0.0] * 4, [2.0, 1.0, 1.0, 2.0], [0.0] * 4]])
    for x in (logits, box, ctr):
        x.requires_grad_(True)
    out = losses(logits, box, ctr, labels, reg)
    assert all(torch.isfinite(v) for v in out.values()), out
    assert out["loss_fcos_cls"] > 1000  # the wrong-way logit is a huge, finite loss
    sum(out.values()).backward()
    for x in (logits, box, ctr):
        assert torch.isfinite(x.grad).all()
    logits = logits.detach().clone()
    logits[0, 3, 0] = float("nan")
    assert torch.isnan(losses(logits, box.detach(), ctr.detach(), labels, reg)["loss_fcos_cls"])


# ---- TEST.AMP: inference under autocast inside the model --------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_test_amp_runs_the_network_in_reduced_precision_with_float32_detections(
    precision, device, one_thread
):
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in make_inputs(BOXES)]
    fp32 = _model(device).eval()
    amp = _model(device, **{"TEST.AMP.ENABLED": True, "TEST.AMP.PRECISION": precision}).eval()
    amp.load_state_dict(fp32.state_dict())
    for m in (fp32, amp):
        _spread_head(m)
    dtypes = conv_output_dtypes(amp)
    fp32_dtypes = conv_output_dtypes(fp32)
    with torch.no_grad():
        ref, out = fp32(inputs), amp(inputs)
    assert set(dtypes) == {getattr(torch, precision)} and set(fp32_dtypes) == {torch.float32}
    for r, o in zip(ref, out):
        r, o = r["instances"], o["instances"]
        assert len(o) > 10
        assert o.pred_boxes.tensor.dtype == torch.float32 and o.scores.dtype == torch.float32
        # same weights and pixels: the best detections agree closely
        top = min(len(r), len(o), 5)
        assert torch.allclose(o.scores[:top], r.scores[:top], atol=0.02)


def test_the_policy_follows_the_mode_not_the_grad_mode(one_thread):
    """In eval mode with autograd on, inference still runs under TEST.AMP (and the folded
    backbone): what a model computes depends on its mode only."""
    model = _model(**{"TEST.AMP.ENABLED": True, "TEST.AMP.PRECISION": "bfloat16"}).eval()
    dtypes = conv_output_dtypes(model)
    inputs = [{"image": make_inputs(BOXES)[0]["image"]}]
    with torch.enable_grad():
        model(inputs)
    with torch.no_grad():
        model(inputs)
    assert len(dtypes) == 2 * len(model.in_features) and set(dtypes) == {torch.bfloat16}
    assert model.inference_backbone() is not model.backbone  # BatchNorm-folded copy
    model.train()
    assert model.autocast_dtype is None  # SOLVER.AMP off: training in float32


# ---- the two-stage model with FCOS proposals --------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_two_stage_model_follows_test_amp_with_float32_detections(device, one_thread):
    from detectron2.modeling import build_model

    dtype = REDUCED_PRECISION[device]

    def build(amp):
        cfg = tiny_cfg(two_stage=True, device=device)
        cfg.MODEL.PROPOSAL_GENERATOR.NAME = "FCOS"
        cfg.TEST.AMP.ENABLED = amp
        cfg.TEST.AMP.PRECISION = str(dtype).replace("torch.", "")
        torch.manual_seed(0)
        return build_model(cfg).eval()

    fp32, amp = build(False), build(True)
    assert type(amp).__name__ == "AMPGeneralizedRCNN"  # the FCOS-RPN configs' meta-arch
    amp.load_state_dict(fp32.state_dict())  # same checkpoint keys
    seen = []
    amp.backbone.bottom_up.stem.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    image = {"image": make_inputs(BOXES)[0]["image"]}
    with torch.no_grad():
        ref = fp32([image])[0]["instances"]
        out = amp([image])[0]["instances"]
        amp.inference([image], do_postprocess=False)  # the TTA wrapper's entry point
    assert seen == [dtype, dtype]
    assert out.scores.dtype == torch.float32 and out.pred_boxes.tensor.dtype == torch.float32
    assert len(out) > 10
    assert torch.allclose(out.scores[:5], ref.scores[:5], atol=0.02)


@pytest.mark.parametrize("device", DEVICES)
def test_detectron2_default_predictor_and_tta_get_test_amp(device, one_thread):
    """Clients that only build and call the model (Detectron2's DefaultPredictor, TTA)
    run it under TEST.AMP with no wrapping of their own."""
    import numpy as np
    from detectron2.engine import DefaultPredictor

    from fcos_d2.modeling.tta import FCOSWithTTA

    dtype = REDUCED_PRECISION[device]
    cfg = tiny_cfg(device=device)
    cfg.TEST.AMP.ENABLED = True
    cfg.TEST.AMP.PRECISION = str(dtype).replace("torch.", "")
    predictor = DefaultPredictor(cfg)
    dtypes = conv_output_dtypes(predictor.model)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    out = predictor(image)["instances"]
    assert set(dtypes) == {dtype} and out.scores.dtype == torch.float32
    cfg.TEST.AUG.MIN_SIZES = (96,)
    cfg.TEST.AUG.FLIP = False
    dtypes.clear()
    tta = FCOSWithTTA(cfg, predictor.model)
    tta([{"image": torch.as_tensor(image).permute(2, 0, 1).float()}])
    assert dtypes and set(dtypes) == {dtype}
