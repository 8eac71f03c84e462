"""A Slurm cluster on this machine, for tests/test_slurm.py and for trying slurm/sid-study.sbatch by hand.

Debian's slurm-wlm (`apt-get install slurm-wlm`): munged, slurmctld and one slurmd per node run in a scratch folder
with their own munge key and socket, free ports on the loopback address, their own state and logs, and no cgroups;
nothing of the system's configuration is read or changed, and stop() ends the jobs and then the daemons by their
pids. Each node (sid1, sid2, ...) is this machine with all its CPUs: several nodes let `srun` start Ray worker nodes
as on a real cluster. Needs root: slurmd starts each job's processes as the job's user.

    python tests/slurm_local.py [NODES]   # starts one, prints the SLURM_CONF to export, stops it on Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
SBIN = ("/usr/sbin", "/sbin")  # the daemons' folder, often missing from a user's PATH


def find(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path=os.pathsep.join(SBIN))


def unavailable() -> str | None:
    """Why a local Slurm cannot run here, or None."""
    missing = [command for command in COMMANDS if find(command) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} not found): `apt-get install slurm-wlm` as root, as "
                f".ci/run does")
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd starts each job as its user); CI runs as root"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """`nodes` nodes (each this machine, all its CPUs) in one partition; the daemons' files live in `folder`."""

    def __init__(self, nodes: int = 1, folder: Path | None = None):
        self.nodes = [f"sid{i + 1}" for i in range(nodes)]
        # munged wants its socket's folder open to all (0755), which pytest's 0700 tmp folders are not
        self.folder = Path(folder or tempfile.mkdtemp(prefix="sid-slurm-")).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        self.conf = self.folder / "slurm.conf"
        self.processes: list[subprocess.Popen] = []

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment whose Slurm commands talk to this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 30) -> str:
        done = subprocess.run([find(args[0]) or args[0], *args[1:]], env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        memory_mb = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
        key = self.folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for name in ["state", *(f"spool-{node}" for node in self.nodes)]:
            (self.folder / name).mkdir(exist_ok=True)
        f = self.folder
        nodes = "\n".join(f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
                          f"CPUs={os.cpu_count()} RealMemory={memory_mb // 1024 * 9 // 10} State=UNKNOWN"
                          for node in self.nodes)
        self.conf.write_text(f"""\
ClusterName=sidlocal
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={f}/munge.socket
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=15
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool-%n
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd-%n.pid
SlurmctldLogFile={f}/slurmctld.log
SlurmdLogFile={f}/slurmd-%n.log
{nodes}
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _daemon(self, *args: str, name: str | None = None) -> None:
        log = open(self.folder / f"{name or args[0]}.out", "w")
        self.processes.append(subprocess.Popen([find(args[0]), *args[1:]], env=self.env(), stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def start(self, timeout: float = 60) -> LocalSlurm:
        """Start the daemons; return once the node takes jobs."""
        self._write_config()
        f = self.folder
        try:
            self._daemon("munged", "--foreground", f"--socket={f}/munge.socket", f"--key-file={f}/munge.key",
                         f"--log-file={f}/munged.log", f"--pid-file={f}/munged.pid", f"--seed-file={f}/munged.seed")
            self._daemon("slurmctld", "-D", "-f", str(self.conf))
            for node in self.nodes:
                self._daemon("slurmd", "-D", "-N", node, "-f", str(self.conf), name=f"slurmd-{node}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(p.poll() is not None for p in self.processes):
                    break
                try:
                    if self.run("sinfo", "-h", "-N", "-o", "%t").split() == ["idle"] * len(self.nodes):
                        return self
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
                time.sleep(0.5)
            raise RuntimeError(f"the local Slurm did not start within {timeout:.0f} s:\n{self.logs()}")
        except BaseException:
            self.stop()
            raise

    def logs(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted(self.folder.glob("*.out")) + sorted(self.folder.glob("*.log")))

    def stop(self, timeout: float = 60) -> None:
        """Cancel every job, wait for them to end, then stop the daemons (slurmds, slurmctld, munged)."""
        if self.processes and all(p.poll() is None for p in self.processes):
            try:
                self.run("scancel", "--partition=local")
                deadline = time.monotonic() + timeout
                while self.run("squeue", "-h").strip() and time.monotonic() < deadline:
                    time.sleep(0.5)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()

    # ---------------------------------------------------------------------------------------------- jobs
    def sbatch(self, *args: str, env: dict[str, str]) -> str:
        """Submit a batch job; return its id."""
        done = subprocess.run([find("sbatch"), "--parsable", *args], env=self.env(env), capture_output=True,
                              text=True, timeout=30)
        if done.returncode:
            raise RuntimeError(f"sbatch failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, ...); finished jobs stay listed for MinJobAge (300 s)."""
        fields = self.run("scontrol", "show", "job", "-o", job_id).split()
        return dict(field.split("=", 1) for field in fields if "=" in field)

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Wait until the job has ended; return its final record (raises TimeoutError, leaving it running)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['JobState']} after {timeout:.0f} s")
            time.sleep(0.5)


def main() -> None:
    reason = unavailable()
    if reason:
        sys.exit(f"slurm_local: {reason}")
    cluster = LocalSlurm(nodes=int(sys.argv[1]) if len(sys.argv) > 1 else 1).start()
    print(f"a {len(cluster.nodes)}-node Slurm runs; in another shell:\n  export SLURM_CONF={cluster.conf}\n"
          "Ctrl-C stops it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        shutil.rmtree(cluster.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
