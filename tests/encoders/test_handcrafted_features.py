"""HandcraftedImageFeatures tells colors and patterns apart on drawn images, without weights."""

import numpy as np
import pytest
from PIL import Image

from llmrec.data import synthetic
from llmrec.encoders.handcrafted import TEXTURE_FEATURES, HandcraftedImageFeatures


def _leave_one_out_accuracy(vectors: np.ndarray, labels: list) -> float:
    """Share of items whose nearest other item (cosine) has the same label."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(1)
    return float(np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]))


def test_shapes_and_unit_norm(swatches):
    images, _ = swatches
    enc = HandcraftedImageFeatures()
    out = enc.encode_images(images[:5])
    assert out.shape == (5, enc.dim) and enc.dim == 4**3 + len(TEXTURE_FEATURES)
    assert np.allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert enc.batches_encoded == 1 and enc.items_encoded == 5


def test_color_block_separates_colors_and_texture_block_separates_patterns(swatches):
    images, labels = swatches
    enc = HandcraftedImageFeatures()
    features = enc.encode_images(images).numpy()
    colors = [c for c, _ in labels]
    patterns = [p for _, p in labels]
    assert _leave_one_out_accuracy(features[:, enc.blocks["color"]], colors) == 1.0
    # Different periods and phases of the same pattern must still be nearest neighbours.
    assert _leave_one_out_accuracy(features[:, enc.blocks["texture"]], patterns) >= 0.95
    # The whole vector: the nearest item shares both color and pattern.
    assert _leave_one_out_accuracy(features, labels) >= 0.9


def test_stripe_orientation_is_visible(swatches):
    images, labels = swatches
    horizontal = images[labels.index(("red", "striped"))]
    vertical = horizontal.transpose(Image.Transpose.ROTATE_90)
    enc = HandcraftedImageFeatures()
    tex = enc.encode_images([horizontal, vertical]).numpy()[:, enc.blocks["texture"]]
    x_share, y_share = TEXTURE_FEATURES.index("edge_x_share"), TEXTURE_FEATURES.index("edge_y_share")
    assert tex[0, y_share] > 3 * tex[0, x_share]  # horizontal stripes: luminance changes along y
    assert tex[1, x_share] > 3 * tex[1, y_share]


def test_solid_product_on_background_is_flat_and_background_is_ignored():
    enc = HandcraftedImageFeatures()
    product = Image.new("RGB", (64, 64), (245, 245, 245))
    product.paste((30, 80, 200), (12, 12, 52, 52))  # a blue square on a light background
    swatch = Image.new("RGB", (64, 64), (30, 80, 200))
    out = enc.encode_images([product, swatch]).numpy()
    flat = enc.blocks["texture"].start + TEXTURE_FEATURES.index("flatness")
    assert out[0, flat] > 0.6  # the outline of the square is not a texture
    color = out[:, enc.blocks["color"]]
    assert float(color[0] @ color[1]) / float(np.linalg.norm(color[0]) * np.linalg.norm(color[1])) > 0.99


def test_deterministic_and_settings_change_the_fingerprint(swatches):
    images, _ = swatches
    a = HandcraftedImageFeatures().encode_images(images[:4])
    b = HandcraftedImageFeatures().encode_images(images[:4])
    assert np.array_equal(a.numpy(), b.numpy())
    assert HandcraftedImageFeatures(color_bins=5).describe() != HandcraftedImageFeatures().describe()
    with pytest.raises(TypeError, match="does not encode text"):
        HandcraftedImageFeatures().encode_texts(["red shirt"])


def test_separates_the_synthetic_shops_drawn_products():
    rng = np.random.default_rng(0)
    images, labels = [], []
    for color in ("red", "blue", "yellow", "gray"):
        for pattern in synthetic.PATTERNS:
            for _ in range(3):
                category = synthetic.CATEGORIES[rng.integers(len(synthetic.CATEGORIES))]
                size = synthetic.SIZES[rng.integers(len(synthetic.SIZES))]
                images.append(synthetic.draw_item_image(category, color, pattern, size, 64))
                labels.append((color, pattern))
    enc = HandcraftedImageFeatures()
    features = enc.encode_images(images).numpy()
    assert _leave_one_out_accuracy(features[:, enc.blocks["color"]], [c for c, _ in labels]) == 1.0
    assert _leave_one_out_accuracy(features[:, enc.blocks["texture"]], [p for _, p in labels]) >= 0.9
