"""fcos_d2's config keys (fcos_d2.config): a mistyped key is an error."""
import pytest

from detectron2.config import get_cfg

from fcos_d2 import add_fcos_config


def test_mistyped_config_key_is_an_error(tmp_path):
    cfg = get_cfg()
    add_fcos_config(cfg)
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  FCOS:\n    NUM_CLASES: 3\n")
    with pytest.raises(KeyError, match="MODEL.FCOS.NUM_CLASES"):
        cfg.merge_from_file(str(path))
    with pytest.raises((KeyError, AssertionError), match="MODEL.FCOS.CENTER_SAMPLING"):
        cfg.merge_from_list(["MODEL.FCOS.CENTER_SAMPLING", "True"])
