"""`sid export --model-card`: README.md beside the export is a Hub model card (front matter parsed by huggingface_hub)
with the generator's settings, its FD ± spread from the run's rows, the teacher's licence or a placeholder said so,
and an `hf upload` line whose upload reads back as the same generator through hf://."""

from __future__ import annotations

import math

import pytest
import torch
from huggingface_hub import ModelCard

from sid.commands import evaluate, export
from sid.config import PRESETS, preset
from sid.generators import load_generator
from sid.model_card import format_score, render, teacher_licence
from sid.results import upsert_evaluations
from sid.saved import SavedGenerator
from sid.teachers import load_teacher
from sid.testing.fixtures import hub_cache, use_offline_hub
from sid.testing.results import row

FID, FID_STD, KIMG = 3.2512, 0.2137, 12.8
FID_IMAGES = 1000  # not the digits preset's 2048: the card shows the run's, sid evaluate the preset's


@pytest.fixture
def run(tmp_path):
    """A run folder: best.pt (the digits teacher nudged) and its evaluations.parquet row with its spread."""
    net = load_teacher("digits")
    with torch.no_grad():
        next(net.parameters()).add_(0.01)
    folder = tmp_path / "run"
    config = preset("digits", fid_images=FID_IMAGES).to_dict()
    SavedGenerator.of(net, sigma_init=2.5, config=config, kimg=KIMG, iteration=100, fid=FID,
                      fid_detector="digits-features-v1", fid_images=2048).save(folder / "best.pt")
    rows = [row("", "run", alpha=1.2, seed=0, kimg=k, fid=f) | {"fid_std": s}
            for k, f, s in [(6.4, 9.5, 0.8), (KIMG, FID, FID_STD)]]
    upsert_evaluations(folder / "evaluations.parquet", rows)
    return folder


def test_the_card_parses_as_a_hub_model_card_with_the_runs_settings_score_and_licence(run, capsys):
    export.main([str(run), "--model-card", "--repo-id", "lab/sid-digits"])
    card_path = run / "export" / "README.md"
    assert f"model card {card_path}" in capsys.readouterr().out
    card = ModelCard.load(card_path)
    data = card.data
    assert data.license == "mit" and data.library_name == "sid-studies"  # the digits teacher is this project's
    assert data.pipeline_tag == "unconditional-image-generation"
    assert data.model_name == "sid-digits"
    (result,) = data.eval_results
    assert result.metric_value == pytest.approx(FID) and result.metric_args["std_error"] == pytest.approx(FID_STD)
    assert result.metric_args == {"detector": "digits-features-v1", "images": 2048, "std_error": FID_STD}
    text = card.text
    assert "**FD 3.25 ± 0.21**" in text and "`digits-features-v1` detector on 2,048 generated images" in text
    assert "12,800 (12.8 kimg, iteration 100)" in text
    config = preset("digits")
    for key, value in [("alpha", config.alpha), ("lr (fake score)", config.lr), ("glr (generator)", config.glr),
                       ("sigma_init", 2.5), ("teacher", "`digits`")]:
        assert f"| {key} | {value} |" in text
    assert f"hf upload lab/sid-digits {run / 'export'} ." in text
    assert "hf://lab/sid-digits" in text


def test_what_the_card_says_uploads_and_reads_back_as_the_same_generator(run, tmp_path, monkeypatch):
    export.main([str(run), "--model-card", "--repo-id", "lab/sid-digits"])
    use_offline_hub(monkeypatch, tmp_path / "hf")
    hub_cache(tmp_path / "hf", "lab/sid-digits", {p.name: p.read_bytes() for p in (run / "export").iterdir()})
    loaded, saved = load_generator("hf://lab/sid-digits")  # what `sid generate --network hf://...` reads
    local, _ = load_generator(run)
    assert saved.fid == FID and saved.kimg == KIMG
    for key, value in local.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # an uploaded export names its preset, nothing more: sid evaluate takes the preset's detector, reference and image
    # count, never the file's (a file never chooses the work: docs/reliability.md)
    args = evaluate.build_parser().parse_args(["hf://lab/sid-digits/generator.safetensors"])
    digits = PRESETS["digits"]
    assert evaluate.settings(args) == dict(detector_name=digits["fid_detector"], ref=digits["fid_ref"],
                                           images=digits["fid_images"]) and digits["fid_images"] != FID_IMAGES


@pytest.mark.parametrize("teacher, licence, base_model", [
    ("digits", "mit", None),
    ("edm:cifar10-uncond", "cc-by-nc-sa-4.0", None),   # NVIDIA's EDM weights: a distilled generator inherits them
    ("hf://lab/teacher/net.pkl@v1", "unknown", "lab/teacher"),
    ("/data/teacher.pkl", "unknown", None),
])
def test_the_licence_comes_from_the_teacher_or_is_a_placeholder_the_card_says_to_fill(teacher, licence, base_model):
    saved = SavedGenerator(init_kwargs={"img_resolution": 32, "img_channels": 3, "label_dim": 10}, state_dict={},
                           sigma_init=2.5, config=dict(preset("cifar10-cond").to_dict(), teacher=teacher))
    text, placeholder = render(saved, repo_id="lab/x", export_folder="export")
    card = ModelCard(text)
    assert card.data.license == licence and placeholder == (teacher_licence(teacher) is None)
    assert card.data.base_model == base_model
    assert ("fill it in before uploading" in text) == placeholder
    assert card.data.pipeline_tag is None  # class-conditional: no Hub task for it
    assert card.data.eval_results is None and "Not evaluated" in text  # no FD: no model-index, said so


def test_the_command_warns_about_a_placeholder_licence_and_refuses_a_bad_repo_id(run, capsys):
    best = torch.load(run / "best.pt", weights_only=True)
    best["config"]["teacher"] = "/data/teacher.pkl"
    torch.save(best, run / "best.pt")
    export.main([str(run), "--model-card"])
    captured = capsys.readouterr()
    assert "license: unknown" in captured.err and "fill it in before uploading" in captured.err
    assert "hf upload YOUR-ORG/run " in (run / "export" / "README.md").read_text()
    with pytest.raises(SystemExit) as raised:
        export.main([str(run), "--model-card", "--repo-id", "no-slash"])
    assert raised.value.code == 2 and "--repo-id: expected a Hub repository id ORG/NAME" in capsys.readouterr().err


@pytest.mark.parametrize("value, spread, expected", [
    (3.2512, 0.2137, "3.25 ± 0.21"),
    (1997.2137, 7.9, "1997.2 ± 7.9"),
    (19.1, 1.8, "19.1 ± 1.8"),
    (250.0, 31.0, "250 ± 31"),
    (3.2512, math.nan, "3.251 (spread unknown"),
])
def test_a_score_is_rounded_to_its_spreads_second_digit(value, spread, expected):
    assert format_score(value, spread).startswith(expected)


@pytest.mark.parametrize("teacher", ["digits", "digits-ddpm"])  # an EDM network and a diffusers VP one
@pytest.mark.parametrize("layout", ["run folder", "study trial"])
def test_the_card_finds_the_spread_and_the_shape_for_every_teacher_kind_and_folder_layout(tmp_path, teacher, layout):
    """A study trial keeps its rows in <study>/evaluations/<trial_id>.parquet beside <study>/runs/<trial_id>; a VP
    network's init_kwargs do not spell out its resolution: the card takes it from the network."""
    net = load_teacher(teacher)
    study = tmp_path / "study"
    folder = study / "runs" / "t1" if layout == "study trial" else tmp_path / "run"
    config = preset(teacher, alpha=0.8595079, fid_images=FID_IMAGES).to_dict()
    SavedGenerator.of(net, sigma_init=1.1806764, config=config, kimg=KIMG, iteration=100, fid=FID,
                      fid_detector="digits-features-v1", fid_images=2048).save(folder / "best.pt")
    rows_path = study / "evaluations" / "t1.parquet" if layout == "study trial" else folder / "evaluations.parquet"
    upsert_evaluations(rows_path, [row("", "t1", alpha=0.8595079, seed=0, kimg=KIMG, fid=FID) | {"fid_std": FID_STD}])
    export.main([str(folder), "--model-card", "--repo-id", "lab/x"])
    card = ModelCard.load(folder / "export" / "README.md")
    assert card.data.license == "mit"  # both embedded teachers are this project's (NOTICE)
    assert card.data.eval_results[0].metric_args["std_error"] == pytest.approx(FID_STD)
    assert card.data.eval_results[0].dataset_name == "digits reference statistics"  # the reference, not the preset
    assert "**FD 3.25 ± 0.21**" in card.text and "| resolution | 8 px, 1 channel(s) |" in card.text
    assert "| alpha | 0.8595 |" in card.text and "| sigma_init | 1.181 |" in card.text
