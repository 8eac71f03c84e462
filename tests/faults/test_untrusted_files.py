"""Untrusted files: no teacher, checkpoint or snapshot runs code from the file; every torch.load in the code is
weights_only=True (a source audit, so that a regression fails here); downloaded assets are checked against their
pinned sha256 (or the one recorded at download time) on every use; downloads stay on https and under a size cap;
a link planted in the cache is refused; a Parquet file with crafted metadata is skipped; a generator file never
chooses what sid evaluate does. Crafted snapshot pickles are in test_crafted_files.py, crafted files of the other
formats in test_hostile_inputs.py, study folders in test_study_folders.py."""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import pickle
import re
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from _util import ROOT, run_command
from safetensors.torch import save_file

from analysis import report
from sid.assets import Asset, AssetError, cache_path, fetch
from sid.checkpoints import fetch_checkpoint
from sid.commands.distill import main as distill_main
from sid.commands.evaluate import build_parser, settings
from sid.metrics import INCEPTION_FILE
from sid.results import read_evaluations, write_evaluations
from sid.saved import FORMAT
from sid.teachers import load_network_file, load_teacher
from sid.testing.crafted import RunsCommand
from sid.testing.fixtures import TINY, flags, make_teacher
from sid.testing.results import row


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-was-executed"


@pytest.fixture
def teacher(tmp_path) -> str:
    return make_teacher(tmp_path / "teacher.pt")


@pytest.mark.timeout(120)
def test_edm_pickle_teacher_that_would_run_a_command_exits_2_naming_the_refused_global(tmp_path, marker):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"ema": RunsCommand(marker)}))
    done = run_command("-m", "sid", "distill", "--teacher", str(evil), "--out", str(tmp_path / "run"), *flags(**TINY))
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(evil) in error and "'posix.system'" in error and "refusing" in error
    assert "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["teacher", "resume"])
def test_torch_file_that_would_run_a_command_is_refused(tmp_path, monkeypatch, capsys, marker, teacher, where):
    """A .pt teacher and a run's checkpoint.pt (also what a Ray checkpoint's state.pt is read with) hold plain data;
    weights_only=True refuses the pickled os.system before anything runs."""
    monkeypatch.chdir(tmp_path)
    evil = Path("evil.pt" if where == "teacher" else "run/checkpoint.pt")
    evil.parent.mkdir(exist_ok=True)
    torch.save({"init_kwargs": RunsCommand(marker), "config": RunsCommand(marker)}, evil)
    argv = ["--teacher", str(evil) if where == "teacher" else teacher, "--out", "run", *flags(**TINY)]
    with pytest.raises(SystemExit) as exited:
        distill_main([*argv, "--resume"] if where == "resume" else argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(evil) in error and "GLOBAL posix.system" in error
    assert not marker.exists()
    with pytest.raises(ValueError, match="GLOBAL posix.system"):
        load_network_file(evil)  # how a run's generator.pt is read, too
    assert not marker.exists()
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert written == {"teacher.pt", evil.as_posix()} | ({"run"} if where == "resume" else set())  # nothing new


# ---------------------------------------------------------------------------------------------- source audit
SOURCES = ["sid", "studies", "analysis", "benchmarks"]
# The only places allowed to go beyond weights_only=True, and why.
ALLOWED = {
    ("sid/safe_pickle.py", "pickle._Unpickler"): "the restricted unpickler of EDM/SiD snapshots (allow-list)",
    ("sid/metrics.py", "torch.jit.load"): "NVIDIA's Inception-v3 exists only as TorchScript (fetched by sid.assets)",
    ("sid/detectors.py", "torch.jit.load"): "a user's own feature network, named by --fid-detector PATH.pt (the trust "
                                            "model: sid/detectors.py, docs/evaluate.md)",
}


def dotted(node: ast.AST) -> str:
    """'torch.jit.load' for the expression torch.jit.load; '' for anything that is not a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def audit(path: Path, relative: str) -> tuple[list[str], int]:
    """Violations in one file, and how many torch.load calls it checked."""
    problems, checked = [], 0
    for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
        where = f"{relative}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill", "cloudpickle", "joblib"):
            names = {a.name for a in node.names} & {"load", "loads", "Unpickler"}
            if names:
                problems.append(f"{where}: from {node.module} import {', '.join(sorted(names))} (call it dotted)")
        if isinstance(node, ast.ClassDef):
            for base in map(dotted, node.bases):
                if base in ("pickle.Unpickler", "pickle._Unpickler") and (relative, base) not in ALLOWED:
                    problems.append(f"{where}: a pickle.Unpickler subclass outside the restricted loader")
        if not isinstance(node, ast.Call):
            continue
        name, keywords = dotted(node.func), {k.arg: k.value for k in node.keywords}
        def literal(key, keywords=keywords):
            return isinstance(keywords.get(key), ast.Constant) and keywords[key].value
        if name == "torch.load":
            checked += 1
            if literal("weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load", "yaml.load",
                      "yaml.unsafe_load", "eval", "exec", "torch.serialization.add_safe_globals",
                      "torch.serialization.safe_globals"):
            problems.append(f"{where}: {name}")
        elif name in ("np.load", "numpy.load") and "allow_pickle" in keywords and literal("allow_pickle") is not False:
            problems.append(f"{where}: {name} with allow_pickle")
        elif name == "torch.jit.load" and (relative, name) not in ALLOWED:
            problems.append(f"{where}: torch.jit.load runs the TorchScript in the file")
    return problems, checked


@pytest.mark.timeout(30)
def test_every_load_in_the_code_is_weights_only_or_the_restricted_unpickler():
    problems, checked = [], 0
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found, n = audit(path, path.relative_to(ROOT).as_posix())
            problems += found
            checked += n
    assert not problems, "\n".join(problems)
    assert checked >= 2  # safe_pickle.load_plain, digits: the audit saw them


@pytest.mark.parametrize("source, problem", [
    ("torch.load(p)", "without weights_only=True"),
    ("torch.load(p, weights_only=False)", "without weights_only=True"),
    ("torch.load(p, weights_only=flag)", "without weights_only=True"),
    ("from torch import load", "call it dotted"),
    ("pickle.loads(b)", "pickle.loads"),
    ("np.load(p, allow_pickle=True)", "allow_pickle"),
    ("torch.jit.load(p)", "TorchScript"),
    ("class U(pickle.Unpickler): pass", "restricted loader"),
    ("class U(pickle._Unpickler): pass", "restricted loader"),
    ("torch.serialization.add_safe_globals([Evil])", "add_safe_globals"),
])
def test_the_audit_catches_each_unsafe_load(tmp_path, source, problem):
    path = tmp_path / "x.py"
    path.write_text(source + "\n")
    found, _ = audit(path, "sid/x.py")
    assert len(found) == 1 and problem in found[0], found


def test_the_audit_passes_a_weights_only_load(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("torch.load(p, map_location='cpu', weights_only=True)\n")
    assert audit(path, "sid/x.py") == ([], 1)


# ---------------------------------------------------------------------------------------------- downloaded assets
def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.timeout(60)
def test_tampered_cached_teacher_is_never_used(tmp_path, monkeypatch, capsys, marker):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    url = Path(make_teacher(tmp_path / "teacher.pt")).as_uri()
    genuine = load_teacher(url)
    cached = cache_path(url)
    assert cached.read_bytes() == (tmp_path / "teacher.pt").read_bytes()
    torch.save({"init_kwargs": RunsCommand(marker)}, cached)  # someone swaps the cached copy
    again = load_teacher(url)
    assert "is corrupt" in capsys.readouterr().err
    assert not marker.exists() and same_weights(again, genuine)
    assert cached.read_bytes() == (tmp_path / "teacher.pt").read_bytes()


@pytest.mark.timeout(60)
def test_teacher_whose_source_changed_since_its_recorded_sha256_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    url = Path(make_teacher(tmp_path / "teacher.pt")).as_uri()
    source = tmp_path / "teacher.pt"
    load_teacher(url)
    torch.manual_seed(1)
    swapped = load_network_file(source)
    for p in swapped.parameters():
        p.data.normal_()
    # the URL now serves another network
    torch.save(dict(init_kwargs=swapped.init_kwargs, state_dict=swapped.state_dict()), source)
    cache_path(url).write_bytes(b"tampered")  # and the cached copy no longer matches its recorded sha256
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_teacher(url)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def genuine(tmp_path) -> Path:
    path = tmp_path / "src" / "asset.bin"
    path.parent.mkdir()
    path.write_bytes(b"genuine weights " * 1000)
    return path


def test_pinned_digest_wins_over_a_swapped_cached_copy_and_its_sidecar(genuine, tmp_path, capsys):
    """Whoever can write the cache can replace a file and its .sha256 record together; the pinned digest is checked
    on every load from the cache, so the swapped copy is never used."""
    pinned = sha(genuine.read_bytes())
    cached = fetch(genuine.as_uri(), sha256=pinned, cache_dir=tmp_path)
    cached.write_bytes(b"swapped")
    cached.with_name(cached.name + ".sha256").write_text(sha(b"swapped") + "\n")
    assert fetch(genuine.as_uri(), sha256=pinned, cache_dir=tmp_path).read_bytes() == genuine.read_bytes()
    assert f"the pinned one {pinned}" in capsys.readouterr().err


def test_registered_asset_is_fetched_with_its_pinned_digest(genuine, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    other = genuine.with_name("other.bin")
    other.write_bytes(genuine.read_bytes())
    registry = {"edm:good": Asset(genuine.as_uri(), sha(genuine.read_bytes())),
                "edm:wrong": Asset(other.as_uri(), "0" * 64), "edm:unpinned": Asset(genuine.as_uri(), None)}
    assert fetch_checkpoint("edm:good", registry, "teacher").read_bytes() == genuine.read_bytes()
    with pytest.raises(ValueError, match=f"expected {'0' * 64}, got {sha(genuine.read_bytes())}"):
        fetch_checkpoint("edm:wrong", registry, "teacher")
    fetch_checkpoint("edm:unpinned", registry, "teacher")
    assert "no sha256 is pinned" in capsys.readouterr().err
    assert len(INCEPTION_FILE.sha256) == 64 and INCEPTION_FILE.url.startswith("https://")


def test_a_source_swapped_since_the_download_never_replaces_the_cached_file(genuine, tmp_path):
    """Even with its .sha256 record lost, a cached file is only replaced by the same bytes: a detector (TorchScript,
    which runs when loaded) swapped at the source is refused naming both digests, the good copy stays."""
    cached = fetch(genuine.as_uri(), cache_dir=tmp_path)
    cached.with_name(cached.name + ".sha256").unlink()
    good = genuine.read_bytes()
    genuine.write_bytes(b"swapped TorchScript")
    with pytest.raises(AssetError, match=f"expected {sha(good)}, got {sha(b'swapped TorchScript')}"):
        fetch(genuine.as_uri(), cache_dir=tmp_path)
    assert cached.read_bytes() == good


def test_plain_http_needs_a_digest_and_downloads_have_a_size_cap(genuine, tmp_path):
    with pytest.raises(ValueError, match="refusing plain http:// .* without a sha256"):
        fetch("http://127.0.0.1:9/teacher.pkl", cache_dir=tmp_path)
    with pytest.raises(AssetError, match="16000 bytes, more than the limit of 1000"):
        fetch(genuine.as_uri(), cache_dir=tmp_path, max_bytes=1000)
    assert not cache_path(genuine.as_uri(), tmp_path).exists()


@pytest.mark.timeout(30)
def test_a_redirect_to_another_scheme_is_refused(tmp_path):
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1:9/teacher.pkl")  # urllib alone would follow it
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/teacher.pkl"
        with pytest.raises(AssetError, match="refusing the redirect .* to ftp://127.0.0.1:9/teacher.pkl"):
            fetch(url, sha256="0" * 64, cache_dir=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert not cache_path(url, tmp_path).exists()


# ---------------------------------------------------------------------------------------------- results and studies
def test_parquet_file_with_crafted_pandas_metadata_is_skipped_naming_it(tmp_path):
    folder = tmp_path / "study" / "evaluations"
    for trial in ("a", "b"):
        write_evaluations(folder / f"{trial}.parquet", [row("study", trial, alpha=1.0, seed=0, kimg=k, fid=5.0 - k)
                                                        for k in (0.0, 1.0)])
    crafted = folder / "c.parquet"
    table = pq.read_table(folder / "a.parquet")
    pq.write_table(table.replace_schema_metadata({b"pandas": b'{"columns": 5}'}), crafted)
    with pytest.warns(UserWarning, match=f"skipping unreadable results file {crafted}"):
        frame = read_evaluations(tmp_path / "study")
    assert sorted(frame["trial_id"]) == ["a", "a", "b", "b"]


# ------------------------------------------------------------------------------------ files never choose the work
def generator_file(tmp_path: Path, kind: str, config: dict) -> Path:
    """A genuine tiny generator as a snapshot .pt or an export, whose embedded config says `config`."""
    tmp_path.mkdir(exist_ok=True)
    saved = torch.load(make_teacher(tmp_path / "net.pt"), weights_only=True)
    if kind == "snapshot":
        path = tmp_path / "generator-000001.000.pt"
        torch.save(dict(saved, sigma_init=2.5, config=config), path)
        return path
    save_file(saved["state_dict"], tmp_path / "g.safetensors")
    (tmp_path / "g.json").write_text(json.dumps(dict(format=FORMAT, init_kwargs=saved["init_kwargs"], sigma_init=2.5,
                                                     **config)))
    return tmp_path / "g.safetensors"


@pytest.mark.parametrize("kind", ["snapshot", "export"])
def test_evaluate_takes_image_count_and_reference_from_flags_or_a_preset_never_from_the_file(tmp_path, kind):
    """A generator file's config chose sid evaluate's work: 2e9 images (days) and a reference URL (downloaded).
    Now only the name of a known preset is taken from it."""
    hostile = dict(preset="digits", fid_images=2 * 10**9, fid_detector="inception-2015-12-05",
                   fid_ref="https://attacker.example/ref.npz")
    path = str(generator_file(tmp_path, kind, hostile))
    digits = dict(detector_name="digits-features-v1", ref="digits", images=2048)
    assert settings(build_parser().parse_args([path])) == digits
    assert settings(build_parser().parse_args([path, "--fid-images", "64", "--fid-ref", "x.npz"])) == dict(
        digits, images=64, ref="x.npz")
    unknown = str(generator_file(tmp_path / "unknown", kind, dict(hostile, preset="attacker")))
    assert settings(build_parser().parse_args([unknown])) == digits


@pytest.mark.parametrize("planted", ["record linked to a file", "record linked to nowhere", "cached file linked"])
def test_a_link_planted_in_the_cache_is_one_clear_error_and_nothing_is_written_through_it(genuine, tmp_path, planted):
    """A shared cache: another user plants `<file>.sha256` (or the cached file) as a link. It was followed: read as
    the record, or written through (creating or overwriting the link's target)."""
    cache, victim = tmp_path / "cache", tmp_path / "victim"
    if planted != "record linked to nowhere":
        victim.write_text("precious\n")
    cached = cache_path(genuine.as_uri(), cache)
    cache.mkdir()
    link = cached if planted == "cached file linked" else cached.with_name(cached.name + ".sha256")
    link.symlink_to(victim)
    with pytest.raises(AssetError, match=f"refusing .*{link.name}.*symbolic link"):
        fetch(genuine.as_uri(), cache_dir=cache)
    assert (victim.read_text() == "precious\n") if planted != "record linked to nowhere" else not victim.exists()


@pytest.mark.parametrize("field", ["study", "fid_detector"])
def test_report_values_from_a_results_file_never_become_markup_or_new_lines(tmp_path, field):
    """A study name with a newline put an image line into report.md that report.html loaded from a remote host, and
    values kept raw HTML; values are now one escaped line and report.html shows only the report's own figures."""
    hostile = "x\n![pixel](https=//attacker.example/p.png) <img src=https://attacker.example/q.png> | *y*"
    study = tmp_path / (hostile.replace("/", "%") if field == "study" else "study")  # the study's name: its folder's
    rows = [dict(row(study.name, f"a{alpha}-s{seed}", alpha=alpha, seed=seed, kimg=kimg,
                     fid=5.0 - alpha * kimg / 10 + seed), **({"fid_detector": hostile} if field != "study" else {}))
            for alpha in (1.0, 1.2) for seed in (0, 1) for kimg in (0.0, 1.0, 2.0)]
    write_evaluations(study / "evaluations" / "all.parquet", rows)
    path, _ = report.build([study], tmp_path / "out")
    md, page = path.read_text(), path.with_suffix(".html").read_text()
    assert "attacker.example" in md  # the value is shown, as text
    assert not [line for line in md.splitlines() if "attacker" in line and line.lstrip().startswith(("!", "<", "#"))
                and not line.startswith("# Study report: ")]
    # in report.md a value's '<' and ']' are backslash-escaped (literal text in Markdown); report.html has no raw tag
    assert not re.search(r"(?<!\\)<img src=https", md) and "<img src=https" not in page
    assert "](https" not in md.replace("\\]", "")
    assert not re.search(r"<img [^>]*src=\"?https?[:=%]", page) and page.count("<img ") == 4
