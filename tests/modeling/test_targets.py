"""Target assignment on hand-computed cases; its memory on many boxes."""
import math
import os

import pytest
import torch

import fcos_d2
from detectron2.modeling import build_model
from fcos_d2.modeling.targets import FCOSTargetAssigner, centerness_targets, compute_locations

K = 3  # classes; background label is K


def assign(assigner, sizes, boxes, classes, crowd=None, strides=(8,)):
    """Run the assigner for one image over levels of the given (h, w) sizes and strides."""
    locations = [compute_locations(h, w, s) for (h, w), s in zip(sizes, strides)]
    labels, reg = assigner(
        locations,
        strides,
        [torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)],
        [torch.tensor(classes, dtype=torch.int64)],
        None if crowd is None else [torch.tensor(crowd)],
    )
    return labels[0], reg[0]


def test_locations_are_stride_centres():
    loc = compute_locations(2, 3, 8)
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert loc.tolist() == expected
    assert compute_locations(1, 2, 128).tolist() == [[64, 64], [192, 64]]


def test_single_box_targets_normalised_by_stride():
    a = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[], center_sample=False)
    labels, reg = assign(a, [(3, 3)], [[0, 0, 16, 16]], [2])
    # locations 0 (4,4), 1 (12,4), 3 (4,12), 4 (12,12) lie inside the box.
    assert labels.tolist() == [2, 2, K, 2, 2, K, K, K, K]
    assert reg[0].tolist() == [0.5, 0.5, 1.5, 1.5]  # l=4 t=4 r=12 b=12, / 8
    assert reg[4].tolist() == [1.5, 1.5, 0.5, 0.5]


def test_location_in_two_boxes_takes_smallest_area():
    a = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[], center_sample=False)
    big, small = [0, 0, 24, 24], [8, 0, 24, 10]
    labels, reg = assign(a, [(3, 3)], [big, small], [0, 1])
    # (12,4) and (20,4) are in both boxes -> the small one (class 1); the rest of the
    # big box's locations take class 0.
    assert labels.tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert reg[1].tolist() == pytest.approx([4 / 8, 4 / 8, 12 / 8, 6 / 8])


def test_center_sampling_keeps_only_central_locations():
    box = [[0, 0, 64, 64]]
    plain = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[], center_sample=False)
    labels, _ = assign(plain, [(8, 8)], box, [0])
    assert (labels == 0).sum() == 64
    sampled = FCOSTargetAssigner(
        num_classes=K, sizes_of_interest=[], center_sample=True, pos_radius=1.5
    )
    labels, _ = assign(sampled, [(8, 8)], box, [0])
    # centre 32, radius 12 -> region (20, 44): x, y in {28, 36}
    pos = labels.view(8, 8) == 0
    assert pos.nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]


def test_center_region_is_clipped_to_the_box():
    # A thin box: radius 1.5 * 8 = 12 exceeds its half height 3, so the region is the box.
    a = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[], center_sample=True)
    labels, _ = assign(a, [(4, 8)], [[0, 9, 64, 15]], [1])
    pos = (labels.view(4, 8) == 1).nonzero().tolist()
    assert pos == [[1, 3], [1, 4]]  # row y=12 (inside 9..15); x=28, 36 in (20, 44)


def test_level_ranges_send_large_boxes_up():
    a = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[64], center_sample=False)
    labels, reg = assign(a, [(13, 13), (7, 7)], [[0, 0, 100, 100]], [0], strides=(8, 16))
    level1, level2 = labels[:169].view(13, 13), labels[169:].view(7, 7)
    # Level 1 (stride 8): a location is positive only when max(l,t,r,b) <= 64, i.e. both
    # coordinates in [36, 64]: x, y in {36, 44, 52, 60} -> 16 locations.
    assert (level1 == 0).sum() == 16
    assert (level1 == 0).nonzero()[:, 0].unique().tolist() == [4, 5, 6, 7]
    # Level 2 (stride 16): locations 8, 24, ..., 88 lie inside (6 x 6 = 36); max distance
    # must be >= 64, which fails only for x, y in {40, 56} (max 60, 60, 60 and 56) -> 32.
    assert (level2 == 0).sum() == 32
    assert level2[3, 3] == K  # (56, 56): max distance 56 belongs to level 1
    idx = 169 + 0 * 7 + 0  # (8, 8): l=t=8, r=b=92 -> / 16
    assert reg[idx].tolist() == pytest.approx([0.5, 0.5, 92 / 16, 92 / 16])


def test_crowd_boxes_are_never_positive_and_their_negatives_ignored():
    a = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[], center_sample=False)
    labels, _ = assign(a, [(3, 3)], [[0, 0, 24, 24], [0, 0, 8, 8]], [0, 1], crowd=[True, False])
    # (4, 4) is inside the normal box -> positive; the other 8 are inside the crowd box.
    assert labels.tolist() == [1] + [-1] * 8


def test_image_without_boxes_is_all_background():
    a = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[])
    labels, reg = assign(a, [(2, 2)], [], [])
    assert labels.tolist() == [K] * 4
    assert reg.abs().sum() == 0


def test_chunked_assignment_equals_unchunked():
    torch.manual_seed(0)
    xy = torch.rand(50, 2) * 200
    wh = torch.rand(50, 2) * 150 + 4
    boxes = torch.cat([xy, xy + wh], dim=1).tolist()
    classes = torch.randint(0, K, (50,)).tolist()
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    strides = (8, 16, 32, 64, 128)
    full = assign(FCOSTargetAssigner(num_classes=K), sizes, boxes, classes, strides=strides)
    chunked = assign(
        FCOSTargetAssigner(num_classes=K, max_pairs_per_chunk=500),
        sizes, boxes, classes, strides=strides,
    )
    assert torch.equal(full[0], chunked[0])
    assert torch.equal(full[1], chunked[1])
    assert (full[0] < K).sum() > 20  # the case is not trivial


def test_centerness_targets():
    ctr = centerness_targets(torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]))
    assert ctr.tolist() == pytest.approx([math.sqrt(1 / 3 * 2 / 4), 1.0])


def test_wrong_number_of_sizes_of_interest_is_refused():
    assigner = FCOSTargetAssigner(num_classes=K, sizes_of_interest=[64])  # 2 levels
    with pytest.raises(ValueError, match="SIZES_OF_INTEREST needs 2 values for 3 levels"):
        assign(assigner, [(4, 4), (2, 2), (1, 1)], [], [], strides=(8, 16, 32))
    cfg = fcos_d2.setup_cfg("configs/Base-FCOS.yaml", ["MODEL.FCOS.SIZES_OF_INTEREST", "[64]"])
    with pytest.raises(ValueError, match="SIZES_OF_INTEREST needs 4 values for 5 levels"):
        build_model(cfg)  # refused when the model is built, before any data


def _peak_rss_mb():
    with open("/proc/self/status") as f:
        return {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in f if ln.startswith("Vm")}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_assignment_of_1000_boxes_in_800x1333_has_bounded_memory():
    torch.manual_seed(0)
    strides = [8, 16, 32, 64, 128]
    locations = [compute_locations(-(-800 // s), -(-1344 // s), s) for s in strides]
    xy = torch.rand(1000, 2) * torch.tensor([1200.0, 700.0])
    boxes = torch.cat([xy, xy + torch.rand(1000, 2) * 120 + 4], dim=1)
    classes = torch.randint(0, 80, (1000,))
    assigner = FCOSTargetAssigner(num_classes=80)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS")
    before = _peak_rss_mb()["VmRSS"]
    labels, reg = assigner(locations, strides, [boxes], [classes])
    extra = _peak_rss_mb()["VmHWM"] - before
    num_pairs = sum(len(level) for level in locations) * 1000  # 22.4M location-box pairs
    # Unchunked, the (R, G, 4) distances alone would take num_pairs * 16 bytes (~360 MB).
    assert extra < 300, f"peak extra memory {extra:.0f} MB for {num_pairs} pairs"
    assert (labels < 80).sum() > 1000
