"""Any study from a YAML file: the space structured (grids, ranges, choices) over any searchable field, the sampler
and callbacks by registry key (docs/studies.md, "A study from a YAML file").

    python studies/search.py study.yaml
    python studies/search.py study.yaml --resume
    python studies/search.py study.yaml --plan          # its price before it runs (or --dry-run: its placement)
"""

from __future__ import annotations

import sys
from pathlib import Path

from sid.cluster.space import StudyError
from sid.cluster.trials import summary as trials_summary
from sid.config import SEARCHABLE
from sid.files import EVALUATIONS_DIR, TRIALS_FILE
from sid.flags import Parser
from studies import _common


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="the study's YAML file")
    parser.add_argument("--storage", type=Path, default=None,
                        help="folder that holds the study folder (default: the file's storage, else ./results)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted study with its saved settings")
    parser.add_argument("--address", default=None,
                        help="Ray cluster: 'auto' joins a running cluster, or host:port (default: start a local Ray)")
    _common.add_before_run_flags(parser)
    args = parser.parse_args(argv)
    # Ray loads here, when a study runs: --help and bad flags answer at once.
    from sid.cluster.distributed import ResourceError  # noqa: PLC0415
    from sid.cluster.study import run_study  # noqa: PLC0415
    from sid.cluster.study_file import read_study_file  # noqa: PLC0415

    try:
        study = read_study_file(args.file, **({"storage": args.storage} if args.storage else {}))
    except StudyError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if _common.before_run(parser, study, args):
        return
    try:
        trials = run_study(study, resume=args.resume, address=args.address,
                           config_text=args.file.read_text(), calibration=args.calibration)
    except (StudyError, ResourceError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print()
    print(trials_summary(trials, [k for k in SEARCHABLE if k in study.space]))
    print(f"\ntrials:      {study.folder / TRIALS_FILE}\nevaluations: {study.folder / EVALUATIONS_DIR}/*.parquet")
    if trials.empty or (trials["state"] == "error").all():
        print("error: no trial ran; see the errors above", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
