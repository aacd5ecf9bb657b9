import pytest

from ddetr_lib.config import PRESETS, Config, get_config, parse_override

PUBLISHED = ["detr_r50", "deformable_detr_r50", "deformable_detr_r50_single_scale",
             "deformable_detr_r50_refine", "deformable_detr_r50_refine_two_stage"]


@pytest.mark.parametrize("name", PUBLISHED + ["toy_detr", "toy_deformable_detr"])
def test_presets_exist(name):
    cfg = get_config(name)
    assert cfg.name == name
    assert name in PRESETS


def test_official_deformable_recipe():
    # Numbers from the paper / official configs (BRIEF, "Facts of the official recipe").
    c = get_config("deformable_detr_r50")
    assert (c.lr, c.lr_backbone, c.lr_linear_proj_mult, c.weight_decay) == (2e-4, 2e-5, 0.1, 1e-4)
    assert (c.epochs, c.lr_drop, c.clip_max_norm, c.batch_size) == (50, 40, 0.1, 2)
    assert (c.num_queries, c.enc_layers, c.dec_layers, c.hidden_dim, c.dim_feedforward) == (300, 6, 6, 256, 1024)
    assert (c.dropout, c.nheads, c.num_feature_levels, c.enc_n_points, c.dec_n_points) == (0.1, 8, 4, 4, 4)
    assert (c.set_cost_class, c.set_cost_bbox, c.set_cost_giou) == (2, 5, 2)
    assert (c.cls_loss_coef, c.bbox_loss_coef, c.giou_loss_coef, c.focal_alpha) == (2, 5, 2, 0.25)
    assert c.num_classes == 91 and c.frozen_batchnorm and c.pretrained_backbone
    assert c.train_scales == list(range(480, 801, 32)) and c.train_max_size == 1333
    assert (c.crop_resize_choices, c.crop_min, c.crop_max) == ([400, 500, 600], 384, 600)
    assert (c.val_size, c.val_max_size) == (800, 1333)
    assert get_config("deformable_detr_r50_single_scale").num_feature_levels == 1
    r = get_config("deformable_detr_r50_refine")
    assert r.with_box_refine and not r.two_stage
    t = get_config("deformable_detr_r50_refine_two_stage")
    assert t.with_box_refine and t.two_stage


def test_toy_presets_train_from_scratch():
    for name in ("toy_detr", "toy_deformable_detr"):
        c = get_config(name)
        assert not c.pretrained_backbone and not c.frozen_batchnorm
        assert c.lr_backbone == c.lr


def test_overrides_and_errors():
    c = get_config("toy_detr", num_classes=5, pretrained_backbone=True)
    assert c.num_classes == 5 and c.pretrained_backbone
    with pytest.raises(ValueError, match="unknown config key"):
        get_config("toy_detr", hidden_dimm=3)
    with pytest.raises(ValueError, match="unknown config"):
        get_config("no_such_model")
    # presets are fresh objects: changing one does not leak into the next
    c.train_scales.append(999)
    assert 999 not in get_config("toy_detr").train_scales


def test_parse_override_types():
    cfg = Config()
    assert parse_override("hidden_dim=128", cfg) == ("hidden_dim", 128)
    assert parse_override("lr=3e-4", cfg) == ("lr", 3e-4)
    assert parse_override("two_stage=true", cfg) == ("two_stage", True)
    assert parse_override("train_scales=96,112", cfg) == ("train_scales", [96, 112])
    assert parse_override("backbone=toy", cfg) == ("backbone", "toy")
    with pytest.raises(ValueError):
        parse_override("two_stage=maybe", cfg)
    with pytest.raises(ValueError):
        parse_override("nokey", cfg)
    with pytest.raises(ValueError):
        parse_override("nope=1", cfg)


def test_model_family_fields_are_explicit():
    # What differs between DETR and Deformable DETR besides the network is a plain field.
    for name in PRESETS:
        c = get_config(name)
        deformable = c.model == "deformable_detr"
        assert c.focal_loss is deformable
        assert c.position_embedding_offset == (-0.5 if deformable else 0.0)
        assert c.num_select == 100
    assert parse_override("position_embedding_offset=-0.5", Config()) == ("position_embedding_offset", -0.5)
    assert parse_override("focal_loss=false", Config()) == ("focal_loss", False)


def test_config_saved_before_the_model_fields_existed():
    # A config dict from an older checkpoint has no focal_loss / position_embedding_offset:
    # the model's own values fill them in (a silent 0.0 offset would change the model).
    saved = get_config("toy_deformable_detr").to_dict()
    del saved["focal_loss"], saved["position_embedding_offset"]
    c = Config(**saved)
    assert c.focal_loss is True and c.position_embedding_offset == -0.5
    with pytest.raises(ValueError, match="model"):
        Config(model="yolo")
