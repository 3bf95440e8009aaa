"""Google's Pub/Sub emulator (the Cloud SDK's JVM server) on a loopback port.

``python -m tests.infra.pubsub_emulator --port P`` runs it in the foreground. Tests use
:func:`running`, which starts it in a child process, waits until it answers gRPC, yields the
client environment (``PUBSUB_EMULATOR_HOST``) and stops it afterwards. The JVM takes several
seconds to start, so start it once per test module.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.infra.gcs_emulator import free_port, wait_for_port

EMULATOR_HOME = Path(os.environ.get("PUBSUB_EMULATOR_HOME",
                                    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator"))


def emulator_command(port: int, data_dir: str) -> list[str]:
    """The command that runs the emulator on 127.0.0.1:``port``; raise FileNotFoundError
    with a one-line hint when the emulator or java is missing."""
    script = EMULATOR_HOME / "bin" / "cloud-pubsub-emulator"
    if not script.exists():
        raise FileNotFoundError(f"Pub/Sub emulator not found at {script} (install the Cloud "
                                "SDK's pubsub-emulator component or set PUBSUB_EMULATOR_HOME)")
    if shutil.which("java") is None:
        raise FileNotFoundError("the Pub/Sub emulator needs java on PATH")
    return [str(script), "--host=127.0.0.1", f"--port={port}", f"--dir={data_dir}"]


def client_env(port: int) -> dict[str, str]:
    """Environment that points google-cloud-pubsub clients at the emulator."""
    return {"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{port}"}


def wait_until_serving(port: int, timeout: float, proc: subprocess.Popen) -> None:
    """Block until the emulator answers a gRPC call (the port opens before it is ready)."""
    wait_for_port(port, timeout, proc)
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    deadline = time.monotonic() + timeout
    old = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    try:
        client = pubsub_v1.PublisherClient()
        while True:
            try:
                list(client.list_topics(request={"project": "projects/probe"}, timeout=5))
                return
            except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"Pub/Sub emulator on port {port} is not serving") \
                        from None
                time.sleep(0.3)
    finally:
        if old is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old


@contextlib.contextmanager
def running(port: int | None = None, log: Path | None = None,
            timeout: float = 90) -> Iterator[dict[str, str]]:
    """Run the emulator for the duration of the block; yield :func:`client_env`.

    The emulator's JVM runs in its own process group, which is killed when the block exits.
    """
    port = port or free_port()
    data_dir = tempfile.mkdtemp(prefix="pubsub-emulator-")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(emulator_command(port, data_dir), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_serving(port, timeout, proc)
        yield client_env(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)
        if log:
            out.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    data_dir = tempfile.mkdtemp(prefix="pubsub-emulator-")
    cmd = emulator_command(args.port, data_dir)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
