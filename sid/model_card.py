"""The model card of an exported generator: README.md beside `sid export`'s files, ready for `hf upload`.

YAML front matter per the Hub's model-card spec (rendered by huggingface_hub.ModelCardData: license, library_name,
tags, pipeline_tag, base_model for a Hub teacher, and a model-index with the Frechet distance), then the generator's
settings, its score with its spread, detector and image count, the licence and how to load and upload it.

The licence comes from the teacher where it is known (TEACHER_LICENCES: the EDM teachers are NVIDIA's, CC BY-NC-SA
4.0, and a generator distilled from one is an adaptation under the same terms; the embedded digits and digits-ddpm
teachers are this project's, MIT); anything else gets `license: unknown` and a line telling the user to fill it in
before uploading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sid import hub
from sid.config import INCEPTION
from sid.files import EVALUATIONS, EVALUATIONS_DIR, RUNS_DIR
from sid.results import EVALUATION_SCHEMA, read_parquet
from sid.saved import SavedGenerator

# Hub licence identifiers (https://huggingface.co/docs/hub/repositories-licenses) of the teachers whose terms are
# known (NOTICE, section 2); a distilled generator is a derivative of its teacher's weights.
TEACHER_LICENCES = {"digits": "mit", "digits-ddpm": "mit",  # the embedded teachers: this project's (NOTICE)
                    "edm:": "cc-by-nc-sa-4.0"}  # a name, or a prefix ending in ':'
UNKNOWN_LICENCE = "unknown"
CARD_FILE = "README.md"  # the Hub reads a repository's model card from this file
LIBRARY = "sid-studies"


def teacher_licence(teacher: str) -> str | None:
    """The Hub licence id of a teacher (TEACHER_LICENCES), None when it is not known here."""
    return next((lic for name, lic in TEACHER_LICENCES.items()
                 if teacher == name or (name.endswith(":") and teacher.startswith(name))), None)


def format_score(value: float, spread: float) -> str:
    """'12.34 ± 0.56': the value to the spread's second significant digit; without a finite spread, 4 significant
    digits and that it is unknown."""
    if not math.isfinite(spread) or spread <= 0:
        return f"{value:.4g} (spread unknown: no {EVALUATIONS} row beside the source)"
    decimals = max(0, 1 - math.floor(math.log10(spread)))
    return f"{value:.{decimals}f} ± {spread:.{decimals}f}"


def evaluation_row(source: str | Path, saved: SavedGenerator) -> Mapping[str, Any] | None:
    """The rows-file row that scored these weights (at the saved kimg and FD): where the FD's spread (fid_std) is. A
    run folder keeps its rows in evaluations.parquet (also above its best.pt or a snapshot); a study's trial in
    <study>/evaluations/<trial_id>.parquet beside <study>/runs/<trial_id>. None for a source outside a run folder or
    without a matching row."""
    path = Path(source)
    if hub.is_hub(str(source)) or saved.kimg is None or saved.fid is None:
        return None
    for folder in (path, path.parent, path.parent.parent):  # the run folder, best.pt's, a snapshot's
        candidates = [folder / EVALUATIONS]
        if folder.parent.name == RUNS_DIR:  # a study trial's run folder
            candidates.append(folder.parent.parent / EVALUATIONS_DIR / f"{folder.name}.parquet")
        for rows_path in candidates:
            if rows_path.is_file():
                rows = read_parquet(rows_path, EVALUATION_SCHEMA)
                match = rows[(rows["kimg"] == saved.kimg) & (rows["fid"] == saved.fid)]
                return match.iloc[-1].to_dict() if len(match) else None
    return None


def setting(value: Any) -> Any:
    """A setting as a card shows it: floats to 4 significant digits (the exact values are in the exported JSON)."""
    return f"{value:.4g}" if isinstance(value, float) else value


def render(saved: SavedGenerator, *, repo_id: str, export_folder: str | Path,
           row: Mapping[str, Any] | None = None, shape: tuple[int, int] | None = None) -> tuple[str, bool]:
    """(README.md text, whether its licence is a placeholder the user must fill in) for the exported generator
    `saved`; `row`: the evaluation that scored it (evaluation_row), for the FD's spread; `shape`: the network's
    (img_resolution, img_channels), which only an EDM network's init_kwargs spell out."""
    from huggingface_hub import EvalResult, ModelCardData  # noqa: PLC0415 (huggingface_hub: only cards need it)

    config = saved.config or {}
    teacher, preset = str(config.get("teacher") or "unknown"), str(config.get("preset") or "unknown")
    reference = str(config.get("fid_ref") or "unknown")
    licence = teacher_licence(teacher)
    fid_std = float(row["fid_std"]) if row is not None and row.get("fid_std") is not None else math.nan
    has_fd = saved.fid is not None and math.isfinite(saved.fid)
    label_dim = int(saved.init_kwargs.get("label_dim", 0) or 0)
    name = repo_id.split("/")[-1]
    results = []
    if has_fd:
        results.append(EvalResult(
            task_type="unconditional-image-generation" if not label_dim else "image-generation",
            dataset_type=reference, dataset_name=f"{reference} reference statistics",
            metric_type="fid" if saved.fid_detector == INCEPTION else "frechet-distance",
            metric_value=round(float(saved.fid), 4),
            metric_name=f"FD ({saved.fid_detector}, {saved.fid_images} images)",
            metric_args={"detector": saved.fid_detector, "images": saved.fid_images,
                         "std_error": None if math.isnan(fid_std) else round(fid_std, 4)}))
    hub_teacher = teacher[teacher.find(hub.SCHEME):] if hub.SCHEME in teacher else ""  # also diffusers:hf://...
    base = hub.parse(hub_teacher).repo_id if hub_teacher else None
    data = ModelCardData(
        license=licence or UNKNOWN_LICENCE, library_name=LIBRARY, base_model=base,
        pipeline_tag=None if label_dim else "unconditional-image-generation",
        tags=["score-identity-distillation", "one-step-generator", "diffusion-distillation", f"sid-{preset}"],
        model_name=name, eval_results=results or None)

    kimg = saved.kimg
    seen = f"{kimg * 1000:,.0f} ({kimg:g} kimg, iteration {saved.iteration})" if kimg is not None else "unknown"
    resolution, channels = shape or (saved.init_kwargs.get("img_resolution"), saved.init_kwargs.get("img_channels"))
    settings = [("preset", preset), ("teacher", f"`{teacher}`"), ("method", config.get("method", "sid")),
                *((key, setting(config.get(field))) for key, field in (
                    ("alpha", "alpha"), ("lr (fake score)", "lr"), ("glr (generator)", "glr"),
                    ("EMA half-life (Mimg)", "ema_mimg"))),
                ("sigma_init", setting(saved.sigma_init)), ("batch", config.get("batch")), ("seed", config.get("seed")),
                ("images seen", seen), ("label_dim", label_dim),
                ("resolution", f"{resolution} px, {channels} channel(s)" if resolution else "unknown")]
    if has_fd:
        score = (f"**FD {format_score(saved.fid, fid_std)}** with the `{saved.fid_detector}` detector on "
                 f"{saved.fid_images:,} generated images against the `{config.get('fid_ref')}` reference statistics, "
                 f"after {seen} training images. ± is the evaluation's standard error (delete-one-group jackknife "
                 "over the images): the spread of the score from its finite image sample, not of training.")
    else:
        score = "Not evaluated: the exported file carries no Frechet distance."
    if licence:
        licence_text = f"`{licence}`, the licence of the teacher `{teacher}` this generator is distilled from."
    else:
        licence_text = (f"**Unknown: fill it in before uploading.** This generator is distilled from `{teacher}`, "
                        "whose licence is not known here; a distilled generator is a derivative of its teacher's "
                        "weights. Replace `license: unknown` above with the teacher's licence identifier "
                        "(https://huggingface.co/docs/hub/repositories-licenses).")
    body = "\n".join([
        f"# {name}", "",
        "A one-step image generator distilled with Score identity Distillation (SiD, Zhou et al., ICML 2024, "
        "https://arxiv.org/abs/2404.04057) with SiD Studies from the diffusion teacher "
        f"`{teacher}`: one network evaluation per image.", "",
        "## Settings", "", "| setting | value |", "|---|---|",
        *(f"| {key} | {value} |" for key, value in settings), "",
        "## Evaluation", "", score, "",
        "## Licence", "", licence_text, "",
        "## Use", "", "```bash",
        f"sid generate --network hf://{repo_id} --seeds 0-63 --out images/",
        "```", "", "```python", "from sid.generators import generate, load_generator",
        f'net, saved = load_generator("hf://{repo_id}")  # generator.safetensors + generator.json',
        "images = next(generate(net, range(16), sigma_init=saved.sampling_sigma_init))  # [-1, 1], NCHW",
        "```", "",
        "## Upload", "", "```bash", f"hf upload {repo_id} {export_folder} .", "```", "",
    ])
    return f"---\n{data.to_yaml()}\n---\n\n{body}", licence is None
