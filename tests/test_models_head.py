"""DFL decoding/encoding, anchors, and the Ultralytics key map of the backbone."""

from __future__ import annotations

import pytest
import torch

from refdet_core.models.backbone import YoloBackbone, load_ultralytics_state_dict, read_ultralytics_file
from refdet_core.models.head import MIN_DIST, bbox_to_dist, dfl_decode, make_anchors

STRIDES = (4, 8, 16, 32)
SHAPES_640 = [(640 // s, 640 // s) for s in STRIDES]


def logits_for(dist: torch.Tensor, reg_max: int = 16) -> torch.Tensor:
    """DFL logits (..., 4 * R) whose expectation is ``dist`` (..., 4): mass split between floor and ceil bins."""
    lo = dist.floor().long().clamp(max=reg_max - 2)
    w_hi = dist - lo
    probs = torch.zeros(*dist.shape, reg_max)
    probs.scatter_(-1, lo[..., None], (1 - w_hi)[..., None])
    probs.scatter_add_(-1, (lo + 1)[..., None], w_hi[..., None])
    return probs.clamp_min(1e-12).log().flatten(-2)


def test_anchors_are_cell_centres() -> None:
    anchors, strides = make_anchors(SHAPES_640, STRIDES)
    assert anchors.shape == (34000, 2) and strides.shape == (34000,)
    assert anchors[0].tolist() == [2.0, 2.0] and anchors[1].tolist() == [6.0, 2.0]
    assert anchors[-1].tolist() == [624.0, 624.0] and strides[-1] == 32


def test_bbox_to_dist_and_decode_round_trip() -> None:
    anchors, strides = make_anchors(SHAPES_640, STRIDES)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(anchors), (500,), generator=g)
    a, s = anchors[idx], strides[idx]
    dist = torch.rand(500, 4, generator=g) * 14 + 0.05  # stride units inside the DFL range
    boxes = torch.cat([a - dist[:, :2] * s[:, None], a + dist[:, 2:] * s[:, None]], dim=1)
    target = bbox_to_dist(boxes, a, s, 16)
    torch.testing.assert_close(target, dist, rtol=1e-4, atol=1e-4)
    decoded = dfl_decode(logits_for(target)[None], a, s)[0]
    torch.testing.assert_close(decoded, boxes, rtol=1e-4, atol=1e-3)
    far = bbox_to_dist(torch.tensor([[10.0, 10.0, 640.0, 640.0]]), torch.tensor([[2.0, 2.0]]), torch.tensor([4.0]), 16)
    assert far.min() == 0.0 and far.max() == pytest.approx(14.99)


def test_every_pixel_of_640_is_reachable() -> None:
    anchors, strides = make_anchors(SHAPES_640, STRIDES)
    reach = torch.full((1, len(anchors), 4), 15.0)  # the largest DFL distance
    boxes = dfl_decode(logits_for(reach), anchors, strides)[0]
    p5 = strides == 32
    # the P5 anchors alone cover the image, and the whole-image box is representable from the centre anchor
    assert boxes[p5, 0].min() <= 0 and boxes[p5, 1].min() <= 0 and boxes[p5, 2].max() >= 640
    centre = torch.tensor([[304.0, 304.0]])
    dist = bbox_to_dist(torch.tensor([[0.0, 0.0, 640.0, 640.0]]), centre, torch.tensor([32.0]), 16)
    assert dist.max() < 15 - 0.01
    # every pixel is covered by the reach of the anchors of every level
    for s in STRIDES:
        level = boxes[strides == s]
        xs = torch.arange(640) + 0.5
        covered = ((level[:, 0, None] <= xs) & (level[:, 2, None] >= xs)).any(dim=0)
        assert covered.all(), f"stride {s}"


def test_decoded_boxes_valid_even_at_zero_distance() -> None:
    anchors, strides = make_anchors(SHAPES_640, STRIDES)
    logits = torch.full((2, len(anchors), 64), -1e4)
    logits[..., ::16] = 1e4  # all mass on bin 0 of every side
    boxes = dfl_decode(logits, anchors, strides)
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
    torch.testing.assert_close(boxes[0, :, 2] - boxes[0, :, 0], 2 * MIN_DIST * strides, rtol=0, atol=1e-4)


def test_uniform_logits_decode_to_mid_range() -> None:
    anchors, strides = make_anchors(SHAPES_640, STRIDES)
    boxes = dfl_decode(torch.zeros(1, len(anchors), 64), anchors, strides)[0]
    torch.testing.assert_close(boxes[:, 2] - boxes[:, 0], 15.0 * strides)  # 2 * 7.5 strides
    torch.testing.assert_close((boxes[:, :2] + boxes[:, 2:]) / 2, anchors)


def test_decode_under_half_precision_is_float32() -> None:
    anchors, strides = make_anchors(SHAPES_640[-1:], STRIDES[-1:])
    boxes = dfl_decode(torch.randn(1, len(anchors), 64, dtype=torch.float16), anchors, strides)
    assert boxes.dtype == torch.float32 and torch.isfinite(boxes).all()


def test_ultralytics_state_dict_loads_and_matches(tmp_path) -> None:
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    ref = tasks.DetectionModel("yolov8n.yaml", verbose=False).eval()
    ours = YoloBackbone(width=0.25, depth=0.33, use_p2=True).eval()
    untouched = load_ultralytics_state_dict(ours, ref.state_dict())
    assert untouched and all(k.startswith("td_p2.") for k in untouched)
    x = torch.rand(1, 3, 128, 128)
    outputs: list[torch.Tensor] = []
    with torch.no_grad():
        y = x
        for layer in ref.model[:-1]:  # everything but the Detect head
            y = layer(y if layer.f == -1 else [outputs[j] for j in layer.f])
            outputs.append(y)
        p2, p3, p4, p5 = ours(x)
    for got, idx in zip((p3, p4, p5), (15, 18, 21)):
        torch.testing.assert_close(got, outputs[idx])
    assert p2.shape == (1, 32, 32, 32)
    with pytest.raises(ValueError, match="does not fit"):
        load_ultralytics_state_dict(YoloBackbone(width=0.5), ref.state_dict())
    from safetensors.torch import save_file

    path = tmp_path / "yolov8n.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    again = YoloBackbone().eval()
    load_ultralytics_state_dict(again, read_ultralytics_file(str(path)))
    with torch.no_grad():
        torch.testing.assert_close(again(x)[1], outputs[15])
