"""tools/analyze_assignment.py: known answers on a hand-made dataset, its table, and a dataset
given as a spec on the command line."""
import json
import os

import pytest

from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from helpers import REPO, coco_spec, load_script, tiny_cfg, unique_name, write_coco_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def load_tool():
    return load_script("tools/analyze_assignment.py")


def annotation(bbox, mode, category_id, iscrowd=0):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": category_id, "iscrowd": iscrowd}


def two_images():
    """32x32 images, resized x2 at test time. In 64x64 coordinates:

    image 0: a1 (class 0) [0, 0, 32, 32] contains a2 (class 1) [8, 8, 24, 24];
    image 1: b1 (class 2) [40, 40, 44, 44] contains no location of any level; a crowd box
    over the whole image; b3, b4 (both class 2) [0, 40, 24, 64], [8, 40, 32, 64] overlap.
    """
    xywh, xyxy = BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
    return [
        {"image_id": 0, "height": 32, "width": 32, "annotations": [
            annotation([0, 0, 16, 16], xywh, 0), annotation([4, 4, 8, 8], xywh, 1)]},
        {"image_id": 1, "height": 32, "width": 32, "annotations": [
            annotation([20, 20, 22, 22], xyxy, 2),
            annotation([0, 0, 32, 32], xyxy, 0, iscrowd=1),
            annotation([0, 20, 12, 32], xyxy, 2),
            annotation([4, 20, 16, 32], xyxy, 2)]},
    ]


ANALYSIS_OPTS = [
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "MODEL.FCOS.SIZES_OF_INTEREST", "[16, 32, 64, 128]", "MODEL.FCOS.POS_RADIUS", "1.5",
]


# Worked out by hand (locations of stride s at s/2 + k*s; P3 only takes every box).
# P3, no center sampling: a1 has 16 locations, a2's 4 are among them (ambiguous, classes
#   0/1, they go to the smaller a2); b3, b4 have 9 each, 6 shared (same class); b1 none.
# P3, center sampling (radius 12): a1's region keeps only a2's 4 locations, so a1 loses
#   them all; b3, b4 unchanged.
# FPN (P3 <= 16 < P4 <= 32 < P5 ...): a2 keeps 4 on P3, a1 gets 4 on P4; b3 and b4 get one
#   location each on P3 and P4 -- no location is shared. Center sampling changes nothing.
EXPECTED = {
    ("P3 only (no FPN)", False): dict(boxes=5, recalled=4, candidates=28, ambiguous=4,
                                      ambiguous_any=10),
    ("P3 only (no FPN)", True): dict(boxes=5, recalled=3, candidates=16, ambiguous=4,
                                     ambiguous_any=10),
    ("FPN (P3-P7)", False): dict(boxes=5, recalled=4, candidates=12, ambiguous=0,
                                 ambiguous_any=0),
    ("FPN (P3-P7)", True): dict(boxes=5, recalled=4, candidates=12, ambiguous=0,
                                ambiguous_any=0),
}


def test_assignment_analysis_known_answers():
    tool = load_tool()
    cfg = tiny_cfg()
    cfg.merge_from_list(ANALYSIS_OPTS)
    results = tool.analyze(two_images(), cfg)
    assert {k: vars(v) for k, v in results.items()} == EXPECTED
    assert results[("P3 only (no FPN)", True)].best_possible_recall == pytest.approx(0.6)
    assert results[("P3 only (no FPN)", False)].ambiguous_share == pytest.approx(4 / 28)


def test_assignment_analysis_command_line(capsys):
    tool = load_tool()
    name = "fcos_test_two_images"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, two_images)
    config = os.path.join(REPO, "configs", "FCOS-Demo", "fcos_R_18_demo.yaml")
    tool.main(["--dataset", name, "--config-file", config] + ANALYSIS_OPTS)
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith(("| P3", "| FPN"))]
    assert rows == [
        "| P3 only (no FPN) | no | 80.00% (4/5) | 14.29% (4) | 35.71% (10) | 28 |",
        "| P3 only (no FPN) | yes | 60.00% (3/5) | 25.00% (4) | 62.50% (10) | 16 |",
        "| FPN (P3-P7) | no | 80.00% (4/5) | 0.00% (0) | 0.00% (0) | 12 |",
        "| FPN (P3-P7) | yes | 80.00% (4/5) | 0.00% (0) | 0.00% (0) | 12 |",
    ]
    assert "2/2 images" in err


def test_analyze_assignment_takes_a_spec(tmp_path, capsys):
    json_file, image_dir = write_coco_folder(str(tmp_path), "train", 3)
    analyze = load_script("tools/analyze_assignment.py")
    spec = coco_spec(unique_name("analyze", tmp_path), json_file, image_dir)
    table = analyze.main(["--dataset", spec, "--config-file",
                          "configs/FCOS-Demo/fcos_R_18_demo.yaml", "INPUT.MIN_SIZE_TEST", "96"])
    with open(json_file) as f:
        num_boxes = len(json.load(f)["annotations"])
    assert f"/{num_boxes})" in table and "FPN (P3-P7)" in table
    assert f"{unique_name('analyze', tmp_path)}: 3 images" in capsys.readouterr().out
