"""`sid ref`: reference statistics (EDM's .npz: mu, sigma) of a dataset, for `--fid-ref`; with labelled data also its
images per class (`class_counts`), from which a conditional run draws its labels (docs/data.md).

    sid ref DATA --fid-detector NAME --out ref.npz      # DATA: image folder, EDM dataset zip, .npz or 'digits'
"""

from __future__ import annotations

from sid.datasets import open_dataset
from sid.flags import RENAMED, Parser
from sid.metrics import detector_names, get_detector, reference_stats_for_images, save_reference_stats


def build_parser() -> Parser:
    parser = Parser(prog="sid ref", description=__doc__.split("\n\n")[0],
                    renamed={"--images": "DATA (the first argument)",
                             **{k: RENAMED[k] for k in ("--detector", "--batch")}})
    parser.add_argument("source", metavar="DATA",
                        help="image folder (searched recursively; EDM's dataset.json labels it), zip of images (EDM's "
                             "dataset_tool), .npz (uint8 images under arr_0 or images, labels under arr_1 or labels) "
                             "or 'digits'")
    parser.add_argument("--fid-detector", required=True,
                        help=f"detector name ({', '.join(detector_names())}) or a TorchScript file PATH.pt")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--batch-per-device", type=int, default=64, help="images per detector call")
    parser.add_argument("--device", default="cpu", help="torch device of the detector, e.g. cuda")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_per_device < 1:
        parser.error(f"--batch-per-device: expected an integer >= 1, got {args.batch_per_device}")
    try:
        dataset = open_dataset(args.source)
        detector = get_detector(args.fid_detector, args.device)
        mu, sigma = reference_stats_for_images(dataset.images(args.batch_per_device), detector)
    except (ValueError, FileNotFoundError) as exc:  # bad data: one line, nothing written
        parser.error(str(exc))
    info = dataset.info
    path = save_reference_stats(args.out, mu, sigma, class_counts=info.class_counts)
    classes = f", class_counts of {info.label_dim} classes" if info.class_counts is not None else ", no labels"
    print(f"wrote {path} ({detector.name}, {mu.shape[0]} features, {info.images} images{classes})")
