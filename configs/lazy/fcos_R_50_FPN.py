"""FCOS R-50-FPN, 1x COCO schedule, as a Detectron2 LazyConfig.

Builds fcos_d2's modules through their keyword constructors; the training parts
(dataloader, optimizer, schedule, ``train``) come from Detectron2's own ``common``
LazyConfigs, so ``tools/lazyconfig_train_net.py`` of Detectron2 runs it as is::

    from detectron2.config import LazyConfig, instantiate
    cfg = LazyConfig.load("configs/lazy/fcos_R_50_FPN.py")
    cfg.model.head.num_classes = 20
    model = instantiate(cfg.model)

It equals ``configs/COCO-Detection/FCOS_R_50_1x.yaml`` (with the ``MODEL.FCOS`` defaults).
For a ResNet-18/34 bottom-up set ``model.backbone.bottom_up.stages.depth`` and delete
``model.backbone.bottom_up.stages.stride_in_1x1`` (basic blocks have no 1x1 conv).
"""
import fcos_d2  # noqa: F401  (registers FCOS in Detectron2)
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from fcos_d2.data.mapper import FCOSDatasetMapper
from fcos_d2.modeling.execution import auto_precision_modes
from fcos_d2.modeling.memory_format import auto_channels_last_modes
from fcos_d2.modeling import (
    FCOS,
    FCOSHead,
    FCOSLosses,
    FCOSPostProcessor,
    FCOSTargetAssigner,
)

# The head reads P3-P7; its input channels follow the FPN's (model.backbone.out_channels).
_HEAD_LEVEL = L(ShapeSpec)(channels="${....backbone.out_channels}")

model = L(FCOS)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        norm="",
        # P6/P7 from P5, as in the FCOS paper (MODEL.FCOS.TOP_BLOCK_IN_FEATURE: "p5")
        top_block=L(LastLevelP6P7)(
            in_channels="${..out_channels}", out_channels="${..out_channels}", in_feature="p5"
        ),
    ),
    head=L(FCOSHead)(
        input_shape=[_HEAD_LEVEL] * 5,
        num_classes=80,
        num_cls_convs=4,
        num_box_convs=4,
        num_share_convs=0,
        norm="GN",
        prior_prob=0.01,
        use_scale=True,
        use_relu=True,
        centerness_on_reg=True,
        use_deformable=False,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],  # strides read from the backbone
    target_assigner=L(FCOSTargetAssigner)(
        num_classes="${..head.num_classes}",
        sizes_of_interest=[64, 128, 256, 512],
        center_sample=True,
        pos_radius=1.5,
    ),
    losses=L(FCOSLosses)(
        num_classes="${..head.num_classes}",
        focal_alpha=0.25,
        focal_gamma=2.0,
        loc_loss_type="giou",
        cls_normalizer="fg",
        box_quality="ctrness",
    ),
    postprocessor=L(FCOSPostProcessor)(
        score_thresh=0.05,
        pre_nms_topk=1000,
        post_nms_topk=100,
        nms_thresh=0.6,
        thresh_with_ctr=False,
        score_sqrt=True,
    ),
    pixel_mean=[103.530, 116.280, 123.675],  # BGR, Caffe-style ImageNet weights
    pixel_std=[1.0, 1.0, 1.0],
    # MODEL.FCOS.MEMORY_FORMAT "auto": NHWC per mode where it is faster on train.device
    channels_last=L(auto_channels_last_modes)(device="${...train.device}"),
    # SOLVER.AMP / TEST.AMP with PRECISION "auto": the network's autocast dtype per mode
    # (training: train.amp.enabled; inference: bfloat16 on CPUs with AMX, else float32)
    precision=L(auto_precision_modes)(
        device="${...train.device}", train_amp="${...train.amp.enabled}"
    ),
    fold_bn_at_test=True,  # MODEL.FCOS.FOLD_BN_AT_TEST: BatchNorm folded into convs at test
    fold_frozen_bn=True,  # MODEL.FCOS.FOLD_FROZEN_BN: FrozenBN folded at every forward
)

# Detectron2's COCO data pipeline (BGR, multi-scale train 640-800 short side, flip), with
# FCOSDatasetMapper: crowd boxes are kept so the assigner ignores locations inside them.
dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper._target_ = FCOSDatasetMapper
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.keep_crowd = True
dataloader.test.mapper._target_ = FCOSDatasetMapper

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x

train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/lazy_fcos_R_50_FPN_1x"
