"""Draw docs/images/weightmap.png: labels, separated target and weight maps side by side.

Run from the repository root::

    python scripts/weightmap_figure.py [--out docs/images/weightmap.png]

The touching cells are generated here (random seeds, Voronoi regions cut to disks), so the
figure does not depend on other modules. Only NumPy, SciPy and Pillow (which scikit-image and
imageio already require) are used; no plotting library is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from napari_unetkit.weightmap import weights_and_target

SIZE = 144  # pixels per side of the synthetic image
ZOOM = 3  # display magnification (nearest neighbour, so single pixels stay visible)
MARGIN = 12
CAPTION = 34
COLORBAR = 14

#: Colour ramp for weights (dark blue -> purple -> orange -> pale yellow), our own anchors.
RAMP = np.array(
    [
        [0.02, 0.02, 0.10],
        [0.18, 0.07, 0.42],
        [0.52, 0.12, 0.52],
        [0.86, 0.32, 0.30],
        [0.98, 0.65, 0.15],
        [0.99, 0.97, 0.70],
    ]
)


def touching_cells(size: int, n_cells: int, seed: int) -> np.ndarray:
    """Round cells that touch their neighbours along straight contact lines."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(6, size - 6, size=(n_cells, 2)).round().astype(int)
    seeds = np.ones((size, size), dtype=bool)
    seeds[points[:, 0], points[:, 1]] = False
    distance, (rows, cols) = ndi.distance_transform_edt(seeds, return_indices=True)
    index = np.zeros((size, size), dtype=np.int64)
    index[points[:, 0], points[:, 1]] = np.arange(1, n_cells + 1)
    nearest = index[rows, cols]
    radii = rng.uniform(9.0, 15.0, size=n_cells + 1)
    return np.where(distance < radii[nearest], nearest, 0).astype(np.int32)


def label_colours(labels: np.ndarray, seed: int = 3) -> np.ndarray:
    """Random bright colour per instance, black background (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    palette = (rng.uniform(0.35, 1.0, size=(int(labels.max()) + 1, 3)) * 255).astype(np.uint8)
    palette[0] = 0
    return palette[labels]


def target_colours(labels: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Separated foreground in light grey, the cut ridge in red, background black."""
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    rgb[target > 0] = (200, 200, 200)
    rgb[(labels > 0) & (target == 0)] = (230, 40, 40)
    return rgb


def ramp(values: np.ndarray, top: float) -> np.ndarray:
    """Map values in [0, top] to RGB through :data:`RAMP` (uint8)."""
    position = np.clip(values / top, 0.0, 1.0) * (len(RAMP) - 1)
    low = np.minimum(position.astype(int), len(RAMP) - 2)
    frac = (position - low)[..., None]
    return ((RAMP[low] * (1 - frac) + RAMP[low + 1] * frac) * 255).round().astype(np.uint8)


def panel(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.kron(rgb, np.ones((ZOOM, ZOOM, 1), dtype=np.uint8)))


def colorbar(width: int, top: float) -> Image.Image:
    values = np.linspace(0, top, width)[None, :].repeat(COLORBAR, axis=0)
    return Image.fromarray(ramp(values, top))


def compose(panels: list[tuple[str, Image.Image, float | None]]) -> Image.Image:
    """Place panels in a row with captions above and colour bars (with range) below."""
    side = SIZE * ZOOM
    width = MARGIN + len(panels) * (side + MARGIN)
    height = CAPTION + side + MARGIN + COLORBAR + 22
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    for i, (caption, image, top) in enumerate(panels):
        x = MARGIN + i * (side + MARGIN)
        draw.text((x, 8), caption, fill="black", font=font)
        canvas.paste(image, (x, CAPTION))
        if top is not None:
            y = CAPTION + side + 6
            canvas.paste(colorbar(side, top), (x, y))
            draw.text((x, y + COLORBAR + 2), "0", fill="black", font=small)
            label = f"{top:.1f}"
            draw.text(
                (x + side - 8 * len(label), y + COLORBAR + 2), label, fill="black", font=small
            )
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/weightmap.png"))
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()

    labels = touching_cells(SIZE, n_cells=45, seed=args.seed)
    paper, target = weights_and_target(labels, preset="paper")
    falk, _ = weights_and_target(labels, preset="falk2019")
    panels = [
        (f"instance labels ({labels.max()} cells)", panel(label_colours(labels)), None),
        ("separated target (ridge in red)", panel(target_colours(labels, target)), None),
        ('weights, preset "paper"', panel(ramp(paper, float(paper.max()))), float(paper.max())),
        ('weights, preset "falk2019"', panel(ramp(falk, float(falk.max()))), float(falk.max())),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compose(panels).save(args.out, optimize=True)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
