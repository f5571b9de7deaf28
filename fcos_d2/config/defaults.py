"""The ``MODEL.FCOS`` config keys.

Key names follow the FCOS reference implementations (AdelaiDet and the original
maskrcnn-benchmark code), so configs written for them port with few changes. Every key
is documented in the README ("Config keys").
"""
from detectron2.config import CfgNode as CN


def add_fcos_config(cfg: CN) -> CN:
    """Add the FCOS keys to a Detectron2 config in place and return it.

    Calling it twice is harmless: keys already present keep their values.
    """
    if "FCOS" in cfg.MODEL:
        return cfg
    was_frozen = cfg.is_frozen()
    cfg.defrost()

    _C = cfg
    _C.MODEL.FCOS = CN()
    fcos = _C.MODEL.FCOS
    # ---- architecture -------------------------------------------------------------------
    fcos.NUM_CLASSES = 80
    fcos.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    fcos.FPN_STRIDES = [8, 16, 32, 64, 128]
    # Where P6/P7 come from: "p5" (FCOS paper) or "res5" (RetinaNet).
    fcos.TOP_BLOCK_IN_FEATURE = "p5"
    fcos.PRIOR_PROB = 0.01
    fcos.NUM_CLS_CONVS = 4
    fcos.NUM_BOX_CONVS = 4
    fcos.NUM_SHARE_CONVS = 0
    fcos.NORM = "GN"  # "GN", "BN" (one BatchNorm per level), or "" for none
    fcos.USE_SCALE = True  # learnable scale per level on the box distances
    fcos.USE_RELU = True  # ReLU on the scaled distances; False uses exp()
    fcos.CENTERNESS_ON_REG = True  # centerness on the box tower (False: cls tower)
    fcos.USE_DEFORMABLE = False  # deformable conv as the last conv of each tower
    # Memory format of the detector per mode: "auto" (the faster of NCHW / NHWC in training
    # and at inference on this machine; see fcos_d2/modeling/memory_format.py), "nchw" or
    # "nhwc". Results equal up to float rounding.
    fcos.MEMORY_FORMAT = "auto"
    fcos.CHANNELS_LAST = None  # deprecated: True / False mean MEMORY_FORMAT "nhwc" / "nchw"
    # At inference (no autograd, not tracing), run a copy of the backbone whose
    # BatchNorms are folded into the convolutions before them; rebuilt when weights change.
    fcos.FOLD_BN_AT_TEST = True
    # Apply the backbone's FrozenBatchNorms by scaling the kernels of the convolutions
    # before them at every forward, training included (no pass over their outputs).
    fcos.FOLD_FROZEN_BN = True
    # Where location (i, j) of a level sits: ((j + LOCATION_OFFSET) * sx, (i + LOCATION_OFFSET)
    # * sy), spacing (sy, sx) the level's stride. 0.5: the centre of the stride cell
    # (FCOS's stride // 2); 0.0: torchvision's anchor centres, k * stride.
    fcos.LOCATION_OFFSET = 0.5
    # Space the locations by (padded input size // level size) per axis instead of the
    # stride, as torchvision's AnchorGenerator (differs from the stride on the levels whose
    # size was rounded up, e.g. P6/P7 of an input padded to 32 only). Boxes still scale by
    # the stride.
    fcos.SPACING_FROM_INPUT = False
    # ---- target assignment --------------------------------------------------------------
    fcos.SIZES_OF_INTEREST = [64, 128, 256, 512]
    fcos.CENTER_SAMPLE = True
    fcos.POS_RADIUS = 1.5
    # ---- losses -------------------------------------------------------------------------
    fcos.LOSS_ALPHA = 0.25
    fcos.LOSS_GAMMA = 2.0
    fcos.LOC_LOSS_TYPE = "giou"  # "iou", "linear_iou", "giou", "smooth_l1"
    fcos.LOSS_NORMALIZER_CLS = "fg"  # "fg", "moving_fg", "all"
    # What the centerness branch predicts: "ctrness" (centerness) or "iou" (box IoU).
    fcos.BOX_QUALITY = "ctrness"
    # ---- inference ----------------------------------------------------------------------
    fcos.INFERENCE_TH_TRAIN = 0.05
    fcos.INFERENCE_TH_TEST = 0.05
    fcos.PRE_NMS_TOPK_TRAIN = 1000
    fcos.PRE_NMS_TOPK_TEST = 1000
    fcos.POST_NMS_TOPK_TRAIN = 100
    fcos.POST_NMS_TOPK_TEST = 100
    fcos.NMS_TH = 0.6
    fcos.THRESH_WITH_CTR = False  # threshold cls*ctr instead of cls
    fcos.SCORE_SQRT = True  # final score sqrt(cls*ctr); False gives cls*ctr
    # Threshold the final score (sqrt(cls*ctr) with SCORE_SQRT) instead of cls (or cls*ctr
    # with THRESH_WITH_CTR), as torchvision.
    fcos.THRESH_ON_FINAL_SCORE = False
    # Drop detections whose box is empty (zero width or height) after clipping to the
    # image, here and in Detectron2's detector_postprocess; torchvision keeps them.
    fcos.REMOVE_EMPTY_BOXES = True


    # ---- FCOS as the RPN of a two-stage detector (PROPOSAL_GENERATOR.NAME: "FCOS") ------
    # Defaults follow Detectron2's anchor RPN: top-k per level before NMS, top-k per image
    # after NMS at IoU 0.7, no score threshold.
    fcos.RPN = CN()
    fcos.RPN.CLASS_AGNOSTIC = True  # one "object" class; False uses NUM_CLASSES
    fcos.RPN.SCORE_TH = 0.0
    fcos.RPN.PRE_NMS_TOPK_TRAIN = 2000
    fcos.RPN.PRE_NMS_TOPK_TEST = 1000
    fcos.RPN.POST_NMS_TOPK_TRAIN = 1000
    fcos.RPN.POST_NMS_TOPK_TEST = 1000
    fcos.RPN.NMS_TH_TRAIN = 0.7
    fcos.RPN.NMS_TH_TEST = 0.7
    # Proposals narrower or lower than this (pixels, input scale) are dropped: a
    # near-zero-size proposal would give the ROI box regression infinite targets.
    fcos.RPN.MIN_SIZE = 1.0

    # ---- precision (fcos_d2/modeling/execution.py has the rule table) -------------------
    # SOLVER.AMP.ENABLED (Detectron2's key) trains under autocast, on CPUs too. PRECISION:
    # "auto" (float16 with a GradScaler on CUDA, bfloat16 on CPUs), "float16", "bfloat16".
    if "PRECISION" not in _C.SOLVER.AMP:
        _C.SOLVER.AMP.PRECISION = "auto"
    # Inference under autocast, inside the model (every client: evaluation, predictors,
    # demo, TTA, Detectron2's tools). "auto": bfloat16 on CPUs with bfloat16 instructions
    # (avx512_bf16), float32 (no autocast) elsewhere; "float16", "bfloat16" or "float32" force one.
    if "AMP" not in _C.TEST:
        _C.TEST.AMP = CN()
        _C.TEST.AMP.ENABLED = True
        _C.TEST.AMP.PRECISION = "auto"

    # ---- data ---------------------------------------------------------------------------
    # Log and skip training images that cannot be read, instead of stopping with an error.
    _C.DATALOADER.SKIP_BAD_IMAGES = False

    # ---- other backbones (fcos_d2/modeling/backbones/) -----------------------------------
    # README "Backbones and head variants"; MODEL.BACKBONE.FREEZE_AT applies to all.
    # RegNet (Detectron2's, SimpleStem + ResBottleneckBlock); the defaults are
    # RegNetX-400MF. SE_RATIO > 0 gives a RegNetY.
    _C.MODEL.REGNETS = CN()
    _C.MODEL.REGNETS.DEPTH = 22
    _C.MODEL.REGNETS.W0 = 24
    _C.MODEL.REGNETS.WA = 24.48
    _C.MODEL.REGNETS.WM = 2.54
    _C.MODEL.REGNETS.GROUP_WIDTH = 16
    _C.MODEL.REGNETS.BOTTLENECK_RATIO = 1.0
    _C.MODEL.REGNETS.STEM_WIDTH = 32
    _C.MODEL.REGNETS.SE_RATIO = 0.0
    _C.MODEL.REGNETS.NORM = "BN"
    _C.MODEL.REGNETS.OUT_FEATURES = ["s2", "s3", "s4"]  # strides 8, 16, 32
    # DarkNet-19 (YOLOv2); "darkK" is the stride-2^K stage.
    _C.MODEL.DARKNET = CN()
    _C.MODEL.DARKNET.NORM = "BN"
    _C.MODEL.DARKNET.OUT_FEATURES = ["dark3", "dark4", "dark5"]
    # MobileNetV2; "mbK" is the stride-2^K stage; WIDTH_MULT scales every layer's width.
    _C.MODEL.MOBILENET = CN()
    _C.MODEL.MOBILENET.WIDTH_MULT = 1.0
    _C.MODEL.MOBILENET.NORM = "BN"
    _C.MODEL.MOBILENET.OUT_FEATURES = ["mb3", "mb4", "mb5"]

    if was_frozen:
        cfg.freeze()
    return cfg
