"""Worker pools behind one interface: scale to n, current size, shut down.

:class:`LocalCluster` runs worker processes on this machine. Its state is a folder of pid
files, so separate processes (an Airflow scale-up task and a later scale-down task) see the
same pool. The Kubernetes backend implements the same :class:`Cluster` interface.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

from pipeline.config import RunConfig, local_path


@dataclass(frozen=True)
class OOMKill:
    """One worker killed by the kernel for exceeding its memory limit."""

    pod: str
    container: str
    finished_at: datetime | None
    memory_limit: str | None = None

    def __str__(self) -> str:
        limit = f" (memory limit {self.memory_limit})" if self.memory_limit else ""
        return f"pod {self.pod} container {self.container} OOMKilled{limit}"


class Cluster(ABC):
    """A pool of workers draining one queue."""

    pool: str

    @abstractmethod
    def scale(self, n: int) -> int:
        """Ask for ``n`` workers (capped by the pool's maximum); return the target size."""

    @abstractmethod
    def size(self) -> int:
        """Workers currently running."""

    def oom_kills(self, since: datetime) -> list[OOMKill]:
        """Workers of this pool OOMKilled at or after ``since`` (each kill once per call).

        Backends that cannot tell return [] (LocalCluster: a killed process just dies)."""
        return []

    def shutdown(self, timeout: float = 60.0) -> None:
        """Scale to zero and wait until no worker runs (at most ``timeout`` seconds)."""
        self.scale(0)
        deadline = time.monotonic() + timeout
        while self.size() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)


class LocalCluster(Cluster):
    """Worker processes on this machine, tracked by pid files under ``state_dir/pool``.

    Scaling down sends SIGTERM, so a worker finishes its current task before exiting.
    """

    def __init__(self, state_dir: str | Path, queue_url: str, dead_letter: str, *,
                 pool: str = "cpu", max_workers: int | None = None, lease_seconds: int = 600,
                 max_attempts: int = 3, env: dict[str, str] | None = None) -> None:
        self.pool = pool
        self.dir = Path(state_dir) / pool
        self.dir.mkdir(parents=True, exist_ok=True)
        self.queue_url = queue_url
        self.dead_letter = dead_letter
        self.max_workers = max_workers
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.env = env

    def pids(self, draining: bool = False) -> list[int]:
        """Pids of this pool's running workers, oldest first: those that take tasks (pid
        files ``*.pid``), or with ``draining`` those told to stop (``*.draining``). Stale
        files are removed."""
        alive = []
        stamped = []
        for f in self.dir.glob("*.draining" if draining else "*.pid"):
            try:  # a worker that exits removes its file at any moment
                stamped.append((f.stat().st_mtime, f.name, f))
            except FileNotFoundError:
                continue
        for _, _, f in sorted(stamped):
            pid = int(f.stem)
            if _is_worker(pid):
                alive.append(pid)
            else:
                f.unlink(missing_ok=True)
        return alive

    def size(self) -> int:
        """Running workers, including those finishing their last task after a scale-down."""
        return len(self.pids()) + len(self.pids(draining=True))

    def scale(self, n: int) -> int:
        """Start or stop workers so that ``n`` take tasks; draining ones don't count, so a
        scale-up right after a scale-down starts new workers."""
        target = max(0, n if self.max_workers is None else min(n, self.max_workers))
        pids = self.pids()
        for _ in range(target - len(pids)):
            self._spawn()
        for pid in reversed(pids[target:]):
            self.stop(pid)
        return target

    def stop(self, pid: int, sig: int = signal.SIGTERM) -> None:
        """Signal one worker (SIGTERM drains it; SIGKILL kills it mid-task)."""
        pid_file = self.dir / f"{pid}.pid"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig == signal.SIGKILL:
            pid_file.unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                pid_file.rename(self.dir / f"{pid}.draining")

    def _spawn(self) -> int:
        cmd = [sys.executable, "-m", "workers", self.queue_url,
               "--dead-letter", self.dead_letter,
               "--lease-seconds", str(self.lease_seconds),
               "--max-attempts", str(self.max_attempts)]
        env = {**os.environ, **(self.env or {})}
        log = open(self.dir / "workers.log", "ab")  # noqa: SIM115  (handed to the child)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        (self.dir / f"{proc.pid}.pid").write_text(" ".join(cmd))
        return proc.pid


def _is_worker(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
        return "workers" in p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def local_state_dir(config: RunConfig) -> Path:
    """Where a LocalCluster keeps its pid files: the run's scratch if local, else a cache."""
    scratch = local_path(config.scratch_path)
    if scratch is not None:
        return Path(scratch) / "cluster"
    return Path(os.path.expanduser("~/.cache/petarecon/clusters")) / config.name


def cluster_for(config: RunConfig, pool: str = "cpu") -> Cluster:
    """The worker pool a run's config asks for."""
    if config.cluster.backend == "local":
        return LocalCluster(local_state_dir(config), config.queue_url, config.dead_letter_path,
                            pool=pool, max_workers=config.cluster.max_workers.get(pool),
                            lease_seconds=config.lease_seconds,
                            max_attempts=config.max_attempts)
    from pipeline.cluster_k8s import KubernetesCluster

    c = config.cluster
    return KubernetesCluster(c.namespace, pool, prefix=c.deployment_prefix,
                             max_workers=c.max_workers.get(pool), kubeconfig=c.kubeconfig)
