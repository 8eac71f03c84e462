"""Figures and the report fit for a paper and a mailbox: titles from the study's description, bands and seed lines
that stay apart where they overlap, the comparison figure's own marks and its sign, --title/--width/--format on every
figure command (sizes read back from the SVG and PDF files), and a self-contained, escaped HTML report with a sample
grid per value."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import matplotlib.colors
import pytest

from analysis import ablation, common, compare, decay_rate, fid_vs_images, hpo_report, page, report
from sid.testing.results import gid, write_results, write_study

OVERLAP = {(a, s): [800.0, 40.0 + s, 30.0 + s, 25.0 + s] for a in (0.5, 1.0, 1.2) for s in (0, 1, 2)}



@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"))



def test_overlapping_bands_and_seed_lines_stay_apart(tmp_path):
    study = write_study(tmp_path, OVERLAP)  # three values with the same curves: every band on top of the others
    evals, trials = common.load([study])
    ax = fid_vs_images.plot(evals, trials).axes[0]
    bands = gid(ax.collections, "band:")
    assert len(bands) == 3
    assert len({b.get_hatch() for b in bands}) == 3 and all(b.get_hatch() for b in bands)
    edges = {tuple(matplotlib.colors.to_rgba(b.get_edgecolor()[0])) for b in bands}
    assert len(edges) == 3
    curves = gid(ax.get_lines(), "curve:")
    assert len({c.get_marker() for c in curves}) == 3 and len({c.get_color() for c in curves}) == 3
    dashes = {}
    for line in gid(ax.get_lines(), "seed:"):
        dashes.setdefault(line.get_gid().split(":")[1], set()).add(str(line.get_linestyle()) + str(line._dash_pattern))
    assert len(dashes) == 3 and len(set().union(*dashes.values())) == 3  # one dash pattern per value


@pytest.mark.parametrize("config, given, want", [
    (None, None, "α = 0.5, 1.0, 1.2 × 3 seeds · digits · 6 kimg per trial"),
    ("description: SiD on digits, the alpha ablation\npreset: digits-study\n", None,
     "SiD on digits, the alpha ablation"),
    ("description: from the study\n", "Figure 3: α sweep", "Figure 3: α sweep"),
    ("[not, a, mapping]\n", None, "α = 0.5, 1.0, 1.2 × 3 seeds · digits · 6 kimg per trial"),
])
def test_title_from_the_study_description_not_its_folder(tmp_path, config, given, want):
    study = write_study(tmp_path, OVERLAP, name="alpha_sweep-digits-study-4k-seed0", config=config)
    fid_vs_images.main([str(study), "--out", str(tmp_path / "out"), "--format", "svg",
                        *(["--title", given] if given else [])])
    titles = [t.text for t in ET.parse(tmp_path / "out" / "fid_vs_images.svg").iter() if t.text]
    assert any(want in " ".join(t.split()) for t in titles)
    assert not any("alpha_sweep-digits-study-4k-seed0" in t for t in titles)


COMMANDS = {fid_vs_images: "fid_vs_images", ablation: "ablation_alpha_best", compare: "compare",
            decay_rate: "decay_rate", hpo_report: "hpo_report_hpo", report: "fid_vs_images"}  # -> a figure it writes


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("command", COMMANDS, ids=lambda m: m.__name__.split(".")[-1])
def test_every_figure_command_takes_title_width_and_format(results, tmp_path, command):
    folder = results.hpo if command is hpo_report else results.alpha_sweep
    command.main([str(folder), "--out", str(tmp_path), "--title", "Figure 2 <b>",
                                             "--width", "3.25", "--format", "svg,pdf"])
    svg = tmp_path / f"{COMMANDS[command]}.svg"
    root = ET.parse(svg).getroot()
    assert root.get("width") == "234pt"  # 3.25 in x 72 pt
    assert any("Figure 2 <b>" in (t.text or "") for t in root.iter())
    pdf = (tmp_path / f"{COMMANDS[command]}.pdf").read_bytes()
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf)
    assert float(box[1]) == pytest.approx(234.0)
    if command is not report:
        assert not list(tmp_path.glob("*.png"))  # only the formats asked for


@pytest.mark.parametrize("flag, value", [("--width", "0"), ("--width", "wide"), ("--format", "jpg"),
                                         ("--format", "png,gif")])
def test_bad_figure_flags_are_one_line_and_exit_code_2(results, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        fid_vs_images.main([str(results.alpha_sweep), "--out", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and flag in err and "Traceback" not in err


def test_comparison_figure_has_its_own_marks_one_row_when_best_is_final_and_a_signed_axis(tmp_path):
    study = write_study(tmp_path, OVERLAP)  # every trial's best is its final evaluation
    _, trials = common.load([study])
    table = compare.compare(trials)
    assert set(table["stat"]) == {compare.BOTH} and len(table) == 3
    ax = compare.plot(table).axes[0]
    assert {c.get_gid() for c in ax.collections if c.get_gid()} == {"mean:best = final", "interval:best = final",
                                                                      "seeds:best = final"}  # no second stat
    value_colours = {matplotlib.colors.to_hex(c) for c in common.palette(trials["alpha"]).values()}
    marks = {matplotlib.colors.to_hex(c.get_edgecolor()[0]) for c in gid(ax.collections, "mean:")}
    assert marks and not marks & value_colours
    assert "← a better" in ax.get_xlabel() and "b better →" in ax.get_xlabel()
    assert "best = final" in compare.to_markdown(table)


def test_html_report_is_self_contained_escaped_and_shows_a_grid_per_value(tmp_path):
    study = write_study(tmp_path, {**OVERLAP, (0.5, 0): [800.0, 40.0, 22.0, 25.0]}, samples=True,
                        config='description: "<script>alert(1)</script> & α sweep"\n')
    path, _ = report.build([study], tmp_path / "report", formats=("png",))
    html = path.with_suffix(".html").read_text()
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; α sweep" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html, re.I)
    assert not re.search(r"""src\s*=\s*["'](?!data:)""", html)  # every image is embedded
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    figures = len(re.findall(r"^!\[", path.read_text(), re.M))
    assert len(images) == figures and figures >= 5 + 3  # the figures and one sample grid per value
    md = path.read_text()
    assert md.count("](samples_alpha_") == 3 and "seed 0, trial a0.5-s0" in md
    grid = (study / "runs" / "a1.0-s0").glob("samples-*.png")
    assert (tmp_path / "report" / "samples_alpha_1.0.png").read_bytes() == next(grid).read_bytes()


def test_markdown_text_from_parquet_cannot_break_the_page():
    text = common.md_text("a|b *c* <img src=x> [l](http://x)\nnext")
    html = page.inline(text)
    assert "\n" not in text and "<img" not in html and "&lt;img src=x&gt;" in html
    assert page._cells(f"| {text} | 2 |") == [text, "2"]  # the escaped '|' does not split a cell
    assert "<em>" not in html and "*c*" in html and "[l](http://x)" in html
    assert page.inline("run `sid evaluate <run>` **now**") == \
        "run <code>sid evaluate &lt;run&gt;</code> <strong>now</strong>"
