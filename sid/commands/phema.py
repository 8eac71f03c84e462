"""`sid phema RUN_OR_STUDY --sigma-rel 0.01,0.05,0.1`: rebuild the generator's EMA of other lengths after training
from the post-hoc EMA snapshots (sid/phema.py) and score each on the run's own evaluation latents.

A run trained with `--phema 0.05,0.10` keeps its profiles in `<run>/phema/`; a study keeps them per trial in
`<study>/runs/<trial_id>/phema/`. For each run and each target length, at each snapshot point (or only the last with
`--last`), the EMA is rebuilt by least squares, its Frechet distance computed with the run's detector, reference
statistics and images per evaluation, and a row written to `<run>/phema.parquet` (sid.results.PHEMA_SCHEMA) tagged
with the length. The table printed at the end gives each run's best length.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pandas as pd
import torch

from sid.checkpoints import check_architecture
from sid.config import DistillConfig, parse_sigma_rels
from sid.datasets import label_distribution
from sid.devices import parse_device
from sid.distill import sample_evaluation_batch
from sid.files import PHEMA, PHEMA_FILE
from sid.flags import Parser
from sid.generators import FACTORY_HELP
from sid.loop import Evaluator
from sid.networks.build import build_network, network_kind
from sid.networks.kinds import EDM_KIND, FACTORY_KIND
from sid.phema import combine, exponent
from sid.results import CONFIG_COLUMNS, PHEMA_KEY, PHEMA_SCHEMA, now_utc, provenance, upsert
from sid.saved import SavedGenerator

DEFAULT_TARGETS = "0.01,0.02,0.05,0.1,0.15,0.2"


def runs_under(source: Path) -> list[Path]:
    """Run folders with post-hoc EMA snapshots: the folder itself, or a study's runs/<trial_id>/."""
    found = [source] if (source / PHEMA).is_dir() else sorted(p.parent for p in source.glob(f"runs/*/{PHEMA}"))
    if not found:
        raise ValueError(f"{source}: no post-hoc EMA snapshots ({PHEMA}/ in a run folder or in a study's "
                         f"runs/<trial_id>/); train with --phema 0.05,0.10 to keep them")
    return found


def list_snapshots(run: Path) -> tuple[list[tuple[int, float, Path]], SavedGenerator]:
    """The run's profile snapshots as (step, gamma, file), sorted by step, and the newest one (its config and
    constructor arguments): weights are read one file at a time when combined, never all at once."""
    paths = sorted((run / PHEMA).glob("*.pt"))
    if not paths:
        raise ValueError(f"{run / PHEMA}: no post-hoc EMA snapshots")
    header = SavedGenerator.load(paths[-1])
    if header.config is None:
        raise ValueError(f"{paths[-1]}: a post-hoc EMA snapshot without its run's config")
    try:
        batch = DistillConfig(**header.config).batch
    except (TypeError, ValueError) as exc:  # a config this version refuses
        raise ValueError(f"{paths[-1]}: not a post-hoc EMA snapshot of this project ({str(exc)[:300]})") from None
    if network_kind(header.init_kwargs) == EDM_KIND:  # other kinds: their snapshots are checked in rebuild()
        check_architecture(header.init_kwargs, paths[-1])
    found = []
    for path in paths:
        try:
            sigma_rel, kimg = (float(part) for part in path.stem.split("-"))
        except ValueError:
            raise ValueError(f"{path}: not a post-hoc EMA snapshot name (<sigma_rel>-<kimg>.pt)") from None
        found.append((round(kimg * 1000 / batch), exponent(sigma_rel), path))
    return sorted(found, key=lambda s: (s[0], s[1])), header


def rebuild(snaps: list[tuple[int, float, Path]], header: SavedGenerator, step: int, sigma_rel: float, *,
            factory: str | None = None,  # module:function of a factory-made run's teacher, named by the user
            ) -> tuple[torch.nn.Module, int]:
    """The generator (of the run's kind) with the sigma_rel EMA at `step`, and how many snapshots went into it."""
    usable = [s for s in snaps if s[0] <= step]
    kind = network_kind(header.init_kwargs)
    if kind == EDM_KIND:
        like = check_architecture(header.init_kwargs, header.source)  # each snapshot is checked against it
    else:  # the names and shapes each snapshot must have; the user's factory builds for real (its buffers)
        with torch.device("meta") if kind != FACTORY_KIND else contextlib.nullcontext():
            like = build_network(header.init_kwargs, factory=factory)
    state = combine([(s, g) for s, g, _ in usable], [p for _, _, p in usable], step, sigma_rel, like=like)
    saved = SavedGenerator(init_kwargs=header.init_kwargs, state_dict=state, source=header.source)
    return saved.network(factory=factory), len(usable)


def phema_run(run: Path, targets: tuple[float, ...], *, last_only: bool, device: torch.device,
              factory: str | None = None) -> pd.DataFrame:
    """Rows for one run folder (also written to <run>/phema.parquet, replacing the same (sigma_rel, kimg))."""
    snaps, header = list_snapshots(run)
    config = DistillConfig(**header.config)
    evaluator = Evaluator(config.replace(eval_metrics="fd"), device)  # phema rows hold the FD only: no IS pass
    probs = label_distribution(config, int(header.init_kwargs.get("label_dim") or 0)).probs  # the run's own classes
    steps = sorted({s for s, _, _ in snaps})
    rows = []
    for step in steps[-1:] if last_only else steps:
        for sigma_rel in targets:
            net, used = rebuild(snaps, header, step, sigma_rel, factory=factory)
            images = config.fid_images_at(step)  # as many images as the run's own evaluation there
            net = net.to(device)
            def sample(index: int, n: int, net=net) -> torch.Tensor:
                return sample_evaluation_batch(net, config, index, n, device, class_probs=probs)

            score = evaluator.score(sample, images)
            rows.append(dict(study="", trial_id=run.name, **{c: getattr(config, c) for c in CONFIG_COLUMNS},
                             sigma_rel=sigma_rel, kimg=step * config.batch / 1000, iteration=step, snapshots=used,
                             fid=score.fd, fid_detector=evaluator.detector.name, fid_images=images,
                             fid_std=score.fd_std,
                             written_at=now_utc()))
            print(f"{run.name}  kimg {step * config.batch / 1000:8.3f}  sigma_rel {sigma_rel:.3f}  "
                  f"{evaluator.detector.name} FD({images}) {score.fd:9.4f} ± {score.fd_std:.3g}", flush=True)
    return upsert(run / PHEMA_FILE, rows, PHEMA_SCHEMA, PHEMA_KEY,
                  metadata=provenance(config.to_dict(), str(device)))


def build_parser() -> Parser:
    parser = Parser(prog="sid phema", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run folder trained with --phema, or a study folder (its runs/<trial_id>/)")
    parser.add_argument("--sigma-rel", default=DEFAULT_TARGETS,
                        help="EMA lengths to rebuild, in (0, 0.3)")
    parser.add_argument("--last", action="store_true", help="only at the last snapshot point (default: at each)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if present, else cpu)")
    parser.add_argument("--factory", default=None, metavar="MODULE:FUNCTION", help=FACTORY_HELP)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        device = parse_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        targets = parse_sigma_rels(args.sigma_rel)
        if not targets:
            raise ValueError("expected at least one sigma_rel")
        runs = runs_under(Path(args.source))
    except ValueError as exc:
        parser.error(f"--sigma-rel / source: {exc}")
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as in training: denormals made CPU networks up to 10x slower
    try:
        frames = [phema_run(run, targets, last_only=args.last, device=device, factory=args.factory) for run in runs]
    except ValueError as exc:
        print(f"sid phema: error: {exc}", file=sys.stderr)
        sys.exit(2)
    table = pd.concat(frames, ignore_index=True).dropna(subset=["fid"])
    best = table.loc[table.groupby(["trial_id", "kimg"])["fid"].idxmin()]
    print("\nbest EMA length per run and point:")
    print(best[["trial_id", "kimg", "sigma_rel", "fid"]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
