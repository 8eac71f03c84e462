"""Every file and folder name of a run folder and of a study folder, defined once: writers and readers import them.

A run folder (`sid distill --out DIR`, or `<study>/runs/<trial_id>/` for a study's trial):

    config.yaml                    the complete resolved config (a file for --config), written with the first row
    evaluations.parquet            one row per evaluation (a study's trials write <study>/evaluations/<trial>.parquet)
    checkpoint.pt                  the complete training state, rewritten once per evaluation (one-run folders only:
                                   a study trial's state lives in its Ray Train checkpoints)
    snapshots/generator-<kimg>.pt  G_ema of an evaluation: weights, constructor arguments, sigma_init, config and the
                                   evaluation's FD; which ones stay is the config's keep_snapshots ('best,last')
    best.pt                        the snapshot of the lowest finite FD (ties: the earlier), a hard link or a copy
    phema/<sigma_rel>-<kimg>.pt    the post-hoc EMA profiles (config phema) at each of their snapshot points
    phema.parquet                  the scores of `sid phema`'s rebuilt EMA lengths
    scores.parquet                 the rows of `sid evaluate` (beside the source it scored)
    samples-<iteration>.png        64 G_ema samples of each evaluation
    tracking.json, tensorboard/, mlruns/   the trackers' run ids and their local stores (sid/tracking.py)

A study folder (`<storage>/<name>/`, sid/cluster/study.py):

    config.yaml                    the study command's resolved config
    trial_settings.json            what every trial gets: base config, resources, folder (the resume contract)
    evaluations/<trial_id>.parquet every evaluation of one trial
    trials.parquet                 one row per trial
    runs/<trial_id>/               the trial's run folder (snapshots, best.pt, sample grids)
    stops/<trial_id>.json          why the study stopped a trial
    train/train-<trial_id>/        the trial's Ray Train run (its checkpoints)
    optuna.journal                 the Optuna study (the default storage)
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------- a run folder
CONFIG_FILE = "config.yaml"          # the complete resolved config: the command's options and every DistillConfig field
EVALUATIONS = "evaluations.parquet"  # a one-run folder's rows
CHECKPOINT = "checkpoint.pt"         # the complete training state
SNAPSHOTS = "snapshots"              # snapshots/generator-<kimg>.pt
BEST = "best.pt"                     # the snapshot of the lowest finite FD
PHEMA = "phema"                      # phema/<sigma_rel>-<kimg>.pt: post-hoc EMA profiles
PHEMA_FILE = "phema.parquet"         # written by `sid phema` into each run folder; not an evaluations file
SCORES_FILE = "scores.parquet"       # written by `sid evaluate`; not an evaluations file
LEGACY_GENERATOR = "generator.pt"    # the G_ema file of run folders written before snapshots existed
RUN_FILES = (BEST, LEGACY_GENERATOR)  # what a run folder resolves to as a generator, in order (then its newest snapshot)
TRACKING_FILE = "tracking.json"      # ids of the MLflow / W&B runs of this folder, so a resume continues them
TRACKING_OFF_FILE = "tracking-off.json"  # trackers this run switched off, and why (for the command's final line)
TENSORBOARD_DIR = "tensorboard"      # <run folder>/tensorboard/events.out.tfevents.*
MLFLOW_DIR = "mlruns"                # default MLflow file store: <run folder>/mlruns

# ---------------------------------------------------------------------------------------------- a study folder
SETTINGS_FILE = "trial_settings.json"  # the base config, resolved resources and folder every trial gets
EVALUATIONS_DIR = "evaluations"        # evaluations/<trial_id>.parquet: every evaluation of one trial
TRIALS_FILE = "trials.parquet"         # one row per trial
RUNS_DIR = "runs"                      # runs/<trial_id>/: the trial's snapshots, best.pt, sample grids
STOPS_DIR = "stops"                    # stops/<trial_id>.json: why the study stopped a trial (sid/cluster/search.py)
TRAIN_DIR = "train"                    # train/train-<trial_id>: the trials' Ray Train runs
JOURNAL = "optuna.journal"             # the default Optuna storage
NOT_EVALUATIONS = (TRIALS_FILE, SCORES_FILE, PHEMA_FILE)  # Parquet files beside evaluations that hold other rows


def snapshot_name(kimg: float) -> str:
    """'generator-000102.656.pt': zero-padded, so names sort by kimg."""
    return f"generator-{kimg:010.3f}.pt"


def samples_name(iteration: int) -> str:
    """'samples-0000050.png': the sample grid of the evaluation after `iteration`."""
    return f"samples-{iteration:07d}.png"


def phema_name(sigma_rel: float, kimg: float) -> str:
    """'0.0500-000102.656.pt': a post-hoc EMA profile at one snapshot point."""
    return f"{sigma_rel:.4f}-{kimg:010.3f}.pt"
