"""Real cluster services on 127.0.0.1 for the tests: PostgreSQL, an `mlflow server` on it, SLURM, Ray.

Each is a context manager that starts the service, waits (bounded) until it answers, yields how to reach it,
and on exit stops only the processes it started (by pid or by the process group it created) and removes or
restores every file it wrote. Nothing here is mocked.

Run by hand, e.g. to look at a cluster:  python tests/cluster/cluster_services.py slurm   (Ctrl-C stops it)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SLURM_CONF = Path("/etc/slurm/slurm.conf")


class ServiceError(RuntimeError):
    """A service did not start (its log tail is in the message)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    log: Path | None = None,
    proc: subprocess.Popen | None = None,
) -> None:
    """Poll ``ready`` every 0.5 s for at most ``timeout_s`` (less if ``proc`` exits); fail with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if ready():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise ServiceError(f"{what} not ready after {timeout_s:.0f} s\n{tail}")


def _stop_group(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group this module created for ``proc`` (it started in a new session), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _as_user(user: str, *command: str) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as its own system user."""
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", user, "--", *command]


@contextlib.contextmanager
def postgres(database: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>; yields ``postgresql://postgres@host:port/db``."""
    root = Path(tempfile.mkdtemp(prefix="prunesweep-pg-"))
    data, log = root / "data", root / "postgres.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    pg_ctl = str(PG_BIN / "pg_ctl")
    try:
        subprocess.run(
            _as_user("postgres", str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=200 -c fsync=off"
        subprocess.run(
            _as_user("postgres", pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
        subprocess.run(
            _as_user("postgres", str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                     database),
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_user("postgres", pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"), timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workers: int = 2) -> Iterator[str]:
    """``mlflow server`` on the given store, serving artifacts from a temporary folder; yields its URL."""
    root = Path(tempfile.mkdtemp(prefix="prunesweep-mlflow-"))
    port = free_port()
    log = root / "server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow), "server", "--backend-store-uri", backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), 120, "mlflow server", log, proc)
        yield url
    finally:
        _stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


SLURM_TEMPLATE = """\
# Written by prunesweep's tests/cluster/services.py for one test session; removed (or restored) after it.
ClusterName=prunesweep-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Without accounting (slurmdbd) the completion log is Slurm's record of each job's final state.
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/slurmd
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ReturnToService=2
# scancel's SIGTERM is followed by SIGKILL after this many seconds (submitit's handler ignores SIGTERM).
KillWait=2
NodeName=localhost CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass(frozen=True)
class Slurm:
    """A running single-node SLURM; ``jobcomp`` is the file where Slurm records each finished job."""

    root: Path
    jobcomp: Path

    def completed_jobs(self) -> dict[str, str]:
        """JobId -> final JobState, from Slurm's completion log."""
        states = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                if "JobId" in fields:
                    states[fields["JobId"]] = fields.get("JobState", "?")
        return states


def _slurm_idle() -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    return out.returncode == 0 and out.stdout.strip() in {"idle", "mixed", "allocated"}


def _munge_works() -> bool:
    encode = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if encode.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encode.stdout, capture_output=True, timeout=10).returncode == 0


def _start_munge(root: Path) -> int | None:
    """Start munged unless one already answers; the pid of the one started here, else None."""
    if _munge_works():
        return None
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    pidfile = Path("/run/munge/munged.pid")
    subprocess.run(_as_user("munge", "/usr/sbin/munged"), check=True, timeout=30)
    wait_until(_munge_works, 30, "munged")
    return int(pidfile.read_text().strip()) if pidfile.exists() else None


def _kill_pid(pid: int, timeout_s: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def slurm(cpus: int = 2) -> Iterator[Slurm]:
    """munged + slurmctld + slurmd for node ``localhost``; writes /etc/slurm/slurm.conf and restores it after."""
    root = Path(tempfile.mkdtemp(prefix="prunesweep-slurm-"))
    for sub in ("ctld", "slurmd"):
        (root / sub).mkdir()
    backup = SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(SLURM_TEMPLATE.format(root=root, cpus=cpus, ctld_port=free_port(), slurmd_port=free_port()))
    pids: list[int] = []
    try:
        munged = _start_munge(root)
        if munged:
            pids.append(munged)
        for daemon, pidfile in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            subprocess.run([f"/usr/sbin/{daemon}"], check=True, timeout=30, capture_output=True)
            wait_until((root / pidfile).exists, 20, daemon, root / f"{daemon}.log")
            pids.append(int((root / pidfile).read_text().strip()))
        wait_until(_slurm_idle, 60, "the SLURM node", root / "slurmctld.log")
        yield Slurm(root, root / "jobcomp.log")
    finally:
        for pid in reversed(pids):
            _kill_pid(pid)
        if backup is None:
            SLURM_CONF.unlink(missing_ok=True)
        else:
            SLURM_CONF.write_bytes(backup)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class RayCluster:
    """A running local Ray cluster: ``address`` to attach to, and each node's process (to kill one)."""

    address: str
    head: subprocess.Popen
    workers: list[subprocess.Popen]


def _ray_node(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """``ray start --block``: the node lives as long as this process group, which teardown ends by its id
    (never ``ray stop``, which would stop every Ray on the machine)."""
    ray = Path(sys.executable).with_name("ray")
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(ray), "start", "--block", "--disable-usage-stats", "--num-cpus=1", *args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip


def _ray_nodes_alive(address: str, expected: int) -> bool:
    ray = Path(sys.executable).with_name("ray")
    try:
        out = subprocess.run(
            [str(ray), "status", f"--address={address}"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:  # a loaded machine: `ray status` alone can take this long; ask again
        return False
    return out.returncode == 0 and out.stdout.count("node_") >= expected


@contextlib.contextmanager
def ray_cluster(node_envs: list[Mapping[str, str]]) -> Iterator[RayCluster]:
    """A head node plus one more node per extra entry of ``node_envs`` (each node's own environment), 1 CPU each."""
    root = Path(tempfile.mkdtemp(prefix="prunesweep-ray-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = _ray_node(
        ["--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
         f"--temp-dir={root / 'tmp'}"],
        node_envs[0], root / "head.log",
    )  # fmt: skip
    workers: list[subprocess.Popen] = []
    try:
        wait_until(lambda: _ray_nodes_alive(address, 1), 180, "the Ray head", root / "head.log", head)
        for index, env in enumerate(node_envs[1:], start=1):
            log = root / f"worker{index}.log"
            workers.append(_ray_node([f"--address={address}", "--node-ip-address=127.0.0.1"], env, log))
            wait_until(lambda i=index: _ray_nodes_alive(address, i + 1), 180, f"Ray node {index}", log, workers[-1])
        yield RayCluster(address, head, workers)
    finally:
        for proc in [*workers, head]:
            _stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    services = {
        "postgres": lambda: postgres(),
        "slurm": lambda: slurm(),
        "ray": lambda: ray_cluster([{}, {}]),
    }
    with services[sys.argv[1]]() as handle:
        print(handle, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
