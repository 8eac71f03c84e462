"""slurm/sid-study.sbatch against a real Slurm on this machine (tests/slurm_local.py: two nodes, each this machine): a
study whose two DDP ranks run on two nodes finishes through sbatch, two jobs on one node each get their own Ray
cluster, and neither a cancelled job nor one stopped as at its time limit leaves a Ray process or folder behind.

The Slurm tests skip, saying why, where Slurm is not installed or we are not root (a laptop); CI installs Slurm
(.ci/run) and fails them instead of skipping."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from slurm_local import LocalSlurm, unavailable

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "slurm" / "sid-study.sbatch"
# digits at 4 iterations of batch 8, evaluated at 0, 0.016 and 0.032 kimg on 256 images
TINY_STUDY = ["--batch=8", "--batch-per-device=8", "--fid-images=256", "--duration-kimg=0.032",
              "--eval-every-kimg=0.016"]
# prints its own cluster's CPUs and nodes, then waits to be stopped, saying whether by SIGINT
PROBE = """import ray, time
ray.init(address="auto")
print(f"probe: {ray.cluster_resources()['CPU']:g} CPU, {len(ray.nodes())} node", flush=True)
try:
    time.sleep(600)
except KeyboardInterrupt:
    print("probe: interrupted", flush=True)
"""


@pytest.fixture(scope="session")
def slurm():
    reason = unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the Slurm tests, but {reason}")
        pytest.skip(reason)
    cluster = LocalSlurm(nodes=2).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture
def ray_tmp():
    """The jobs' node-local Ray folder parent: short, as Ray's socket paths must stay under 107 characters."""
    folder = Path(tempfile.mkdtemp(prefix="sidray"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def job_env(ray_tmp: Path) -> dict[str, str]:
    """The submitting shell of a user who activated the project's environment (sbatch passes it on)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "SLURM_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # this checkout wins
    env.update(SID_RAY_TMP=str(ray_tmp), SID_RAY_ARGS="--object-store-memory=268435456", RAY_USAGE_STATS_ENABLED="0")
    return env


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (Ray's processes name their session folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line and str(cmdline.parent.name) != str(os.getpid()):
            found.append(line[:200])
    return found


def assert_cleaned_up(ray_tmp: Path, output: str) -> None:
    deadline = time.monotonic() + 30
    while (leftover := processes_mentioning(str(ray_tmp))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftover, f"Ray processes outlived the job:\n{leftover}\n{output[-3000:]}"
    assert not list(ray_tmp.iterdir()), f"the job left {list(ray_tmp.iterdir())}\n{output[-3000:]}"


# ---------------------------------------------------------------------------------------------- misuse
@pytest.mark.parametrize(("args", "env", "message"), [
    ([], {"SLURM_JOB_ID": "1"}, "no command"),
    (["python", "studies/alpha_sweep.py"], {"SLURM_JOB_ID": "1"}, "add --address auto"),
    (["python", "studies/alpha_sweep.py", "--address", "auto"], {}, "submit this script with sbatch"),
])
def test_recipe_refuses_a_command_it_cannot_run_as_asked(args, env, message):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", str(RECIPE), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=30, cwd=ROOT)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1  # one line


# ---------------------------------------------------------------------------------------------- real Slurm
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_study_on_two_nodes_finishes_through_sbatch(slurm, ray_tmp, tmp_path):
    storage, output = tmp_path / "shared", tmp_path / "job.out"
    # one rank per node (STRICT_SPREAD): the trial can only start once the worker node has joined through srun
    job = slurm.sbatch("--nodes=2", "--cpus-per-task=1", "--time=10", f"--output={output}", f"--chdir={ROOT}",
                       str(RECIPE), "python", "studies/alpha_sweep.py", "--address", "auto", "--storage",
                       str(storage), "--name", "slurm", "--alphas", "1.0", "--seeds", "1", "--workers", "2",
                       "--cpus-per-worker", "0.5", "--placement", "STRICT_SPREAD", *TINY_STUDY, env=job_env(ray_tmp))
    try:
        record = slurm.wait(job, timeout=360)
    except TimeoutError as exc:
        slurm.run("scancel", job)
        pytest.fail(f"{exc}\n{output.read_text()[-5000:] if output.exists() else '(no output)'}")
    text = output.read_text()
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), f"{record}\n{text[-5000:]}"
    assert re.search(r"2 of 2 node\(s\) joined: 2 CPUs", text), text[-3000:]
    trials = pd.read_parquet(storage / "slurm" / "trials.parquet")
    assert len(trials) == 1 and (trials["state"] == "completed").all(), trials.to_string()
    assert "sid-study.sbatch: ray stopped" in text
    assert_cleaned_up(ray_tmp, text)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_jobs_on_one_node_get_their_own_clusters_and_stop_cleanly(slurm, ray_tmp, tmp_path):
    """Both jobs run on sid1 at once; the first is cancelled (every process gets SIGTERM), the second is stopped as at
    its time limit (--signal=B:TERM: the batch shell alone, which interrupts the command and then stops Ray)."""
    outputs = [tmp_path / f"job{i}.out" for i in range(2)]
    jobs = [slurm.sbatch("--nodes=1", "--cpus-per-task=1", "--nodelist=sid1", "--time=10", f"--output={out}",
                         f"--chdir={tmp_path}", str(RECIPE), "python", "-c", PROBE, "--address", "auto",
                         env=job_env(ray_tmp)) for out in outputs]

    def read(path: Path) -> str:
        return path.read_text() if path.exists() else ""

    try:
        deadline = time.monotonic() + 180
        while not all("probe: " in read(out) for out in outputs) and time.monotonic() < deadline:
            assert all(slurm.job(job)["JobState"] in ("PENDING", "RUNNING") for job in jobs), \
                "\n".join(read(out)[-3000:] for out in outputs)
            time.sleep(0.5)
        texts = [read(out) for out in outputs]
        # each job sees its own one-node, one-CPU cluster, while both run on the node at once
        assert all("probe: 1 CPU, 1 node\n" in text for text in texts), "\n".join(t[-3000:] for t in texts)
        assert [slurm.job(job)["JobState"] for job in jobs] == ["RUNNING", "RUNNING"]
    finally:
        slurm.run("scancel", jobs[0])
        slurm.run("scancel", "--batch", "--signal=TERM", jobs[1])
        records = [slurm.wait(job, timeout=90) for job in jobs]
    texts = [read(out) for out in outputs]
    assert records[0]["JobState"] == "CANCELLED" and (records[1]["JobState"], records[1]["ExitCode"]) == \
        ("FAILED", "143:0"), records  # the second: the script's exit code after SIGTERM
    assert "probe: interrupted" in texts[1], texts[1][-3000:]  # the command got SIGINT, as a study needs
    assert all("sid-study.sbatch: ray stopped" in text for text in texts), "\n".join(t[-3000:] for t in texts)
    assert_cleaned_up(ray_tmp, "\n".join(texts))
