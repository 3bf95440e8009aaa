"""The worker process: lease a task, run it, delete it; renew long leases; drain on SIGTERM."""

from workers.worker import Worker, run_worker

__all__ = ["Worker", "run_worker"]
