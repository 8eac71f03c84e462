"""`sid ref`: reference statistics (EDM's .npz: mu, sigma) of a folder or zip of images, for `--fid-ref`.

    sid ref DIR_OR_ZIP --fid-detector NAME --out ref.npz
"""

from __future__ import annotations

from sid.flags import RENAMED, Parser
from sid.metrics import (
    detector_names,
    get_detector,
    iter_image_batches,
    reference_stats_for_images,
    save_reference_stats,
)


def build_parser() -> Parser:
    parser = Parser(prog="sid ref", description=__doc__.split("\n\n")[0],
                    renamed={"--images": "SOURCE (the first argument)",
                             **{k: RENAMED[k] for k in ("--detector", "--batch")}})
    parser.add_argument("source", help="folder (searched recursively) or .zip of PNG/JPEG images")
    parser.add_argument("--fid-detector", required=True,
                        help=f"detector name ({', '.join(detector_names())}) or a TorchScript file PATH.pt")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--batch-per-device", type=int, default=64, help="images per detector call")
    parser.add_argument("--device", default="cpu", help="torch device of the detector, e.g. cuda")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        detector = get_detector(args.fid_detector, args.device)
        mu, sigma = reference_stats_for_images(iter_image_batches(args.source, args.batch_per_device), detector)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    print(f"wrote {save_reference_stats(args.out, mu, sigma)} ({detector.name}, {mu.shape[0]} features)")
