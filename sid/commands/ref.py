"""`sid ref`: reference statistics (EDM's .npz: mu, sigma) of a folder or zip of images, for `--fid-ref`.

    sid ref --images DIR_OR_ZIP --detector NAME --out ref.npz
"""

from __future__ import annotations

import argparse

from sid.metrics import (
    detector_names,
    get_detector,
    iter_image_batches,
    reference_stats_for_images,
    save_reference_stats,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sid ref", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder (searched recursively) or .zip of PNG/JPEG images")
    parser.add_argument("--detector", required=True, help=f"detector name: {', '.join(detector_names())}")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--batch", type=int, default=64, help="images per detector call")
    parser.add_argument("--device", default="cpu", help="torch device of the detector, e.g. cuda")
    args = parser.parse_args(argv)
    try:
        detector = get_detector(args.detector, args.device)
        mu, sigma = reference_stats_for_images(iter_image_batches(args.images, args.batch), detector)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(f"wrote {save_reference_stats(args.out, mu, sigma)} ({detector.name}, {mu.shape[0]} features)")
