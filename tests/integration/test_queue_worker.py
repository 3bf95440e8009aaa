"""The queue and workers under real failure: kill -9, repeated errors, long tasks, SIGTERM."""

from __future__ import annotations

import signal
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from pipeline import storage
from pipeline.cluster import LocalCluster
from pipeline.geometry import Bbox, ChunkGrid
from pipeline.queue import DeadLetters, WaveFailed, enqueue_wave, open_queue, wait_for_wave
from tests.integration import slow_tasks


def names(marks: Path, kind: str) -> list[str]:
    d = marks / kind
    return sorted(p.name.split("--")[0] for p in d.iterdir()) if d.exists() else []


def pids_running(marks: Path) -> set[int]:
    """Pids of workers that started a task they have not finished."""
    started = {(p.name.split("--")[0], int(p.name.split("--")[1]))
               for p in (marks / "started").iterdir()} if (marks / "started").exists() else set()
    done = {(p.name.split("--")[0], int(p.name.split("--")[1]))
            for p in (marks / "done").iterdir()} if (marks / "done").exists() else set()
    return {pid for key in started - done for pid in [key[1]]}


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(1)
    zyx = rng.integers(0, 256, (8, 48, 64), dtype=np.uint8)
    source = tmp_path / "stack.npy"
    np.save(source, zyx)
    box = Bbox.from_shape((64, 48, 8))

    def make(name: str, lease: int = 600, attempts: int = 3):
        layer = f"file://{tmp_path}/{name}/image"
        storage.create_layer(layer, "image", box, (4, 4, 40), (16, 16, 4))
        queue = f"fq://{tmp_path}/{name}/queue"
        dead = f"file://{tmp_path}/{name}/dead"
        cluster = LocalCluster(tmp_path / name / "cluster", queue, dead, lease_seconds=lease,
                               max_attempts=attempts)
        return layer, queue, DeadLetters(dead), cluster, tmp_path / name / "marks"

    return source, box, zyx, make


def ingest_tasks(marks, delay, source, layer, box):
    return [partial(slow_tasks.slow_ingest, str(marks), delay, str(source), layer, b.to_list())
            for b in ChunkGrid(box, (32, 16, 8))]


def test_kill_9_mid_task_still_completes_every_task_once(setup):
    source, box, zyx, make = setup
    # failure-free reference run
    ref_layer, queue, dead, cluster, marks = make("clean")
    n = enqueue_wave(queue, ingest_tasks(marks, 0.0, source, ref_layer, box))
    cluster.scale(2)
    wait_for_wave(queue, "ingest", n, dead, alive=cluster.size, timeout=120)
    cluster.shutdown()

    layer, queue, dead, cluster, marks = make("chaos", lease=3)
    tasks = ingest_tasks(marks, 1.5, source, layer, box)
    n = enqueue_wave(queue, tasks)
    assert n == 6
    cluster.scale(2)
    deadline = time.monotonic() + 60
    while not pids_running(marks) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = sorted(pids_running(marks))[0]
    cluster.stop(victim, signal.SIGKILL)
    assert cluster.size() == 1
    wait_for_wave(queue, "ingest", n, dead, alive=cluster.size, timeout=120)
    cluster.shutdown()

    done = names(marks, "done")
    assert sorted(set(done)) == sorted("_".join(map(str, t.args[4])) for t in tasks)
    assert len(done) == len(set(done)) == 6, "every task completes exactly once"
    assert len(names(marks, "started")) == 7, "the killed task ran again on the other worker"
    assert dead.list() == []
    out = storage.read(layer, box)[..., 0]
    assert np.array_equal(out, zyx.transpose(2, 1, 0))
    assert np.array_equal(out, storage.read(ref_layer, box)[..., 0])
    chunks = sorted(p.name for p in Path(layer[7:]).rglob("*.gz"))
    ref_chunks = sorted(p.name for p in Path(ref_layer[7:]).rglob("*.gz"))
    assert chunks == ref_chunks
    for name in chunks:
        a = next(Path(layer[7:]).rglob(name)).read_bytes()
        b = next(Path(ref_layer[7:]).rglob(name)).read_bytes()
        assert a == b


def test_dead_letter_after_n_failures(setup):
    *_, make = setup
    _, queue, dead, cluster, marks = make("dead", attempts=2)
    n = enqueue_wave(queue, [partial(slow_tasks.always_fails, "disk on fire"),
                             partial(slow_tasks.fails_once, str(marks), "flaky")])
    cluster.scale(1)
    with pytest.raises(WaveFailed, match=r"failed 2 times; first: RuntimeError: disk on fire"):
        wait_for_wave(queue, "broken", n, dead, alive=cluster.size, timeout=60)
    deadline = time.monotonic() + 30
    while open_queue(queue).enqueued and time.monotonic() < deadline:
        time.sleep(0.1)
    cluster.shutdown()
    records = dead.list()
    assert len(records) == 1
    assert records[0]["attempts"] == 2 and "disk on fire" in records[0]["traceback"]
    assert records[0]["task"][0] == ["tests.integration.slow_tasks", "always_fails"]
    assert open_queue(queue).enqueued == 0, "dead task deleted, flaky task retried and done"
    assert names(marks, "done") == ["flaky"]


def test_long_task_renews_its_lease(setup):
    *_, make = setup
    _, queue, dead, cluster, marks = make("renew", lease=6)
    n = enqueue_wave(queue, [partial(slow_tasks.sleeper, str(marks), "long", 9.0)])
    cluster.scale(2)
    wait_for_wave(queue, "long", n, dead, alive=cluster.size, timeout=60)
    cluster.shutdown()
    assert names(marks, "started") == ["long"], "renewed lease: no second worker ran it"
    assert names(marks, "done") == ["long"]


def test_sigterm_drains_after_current_task(setup):
    *_, make = setup
    _, queue, _dead, cluster, marks = make("drain")
    enqueue_wave(queue, [partial(slow_tasks.sleeper, str(marks), f"t{i}", 2.0) for i in range(3)])
    cluster.scale(1)
    deadline = time.monotonic() + 30
    while not names(marks, "started") and time.monotonic() < deadline:
        time.sleep(0.05)
    cluster.scale(0)  # SIGTERM
    deadline = time.monotonic() + 30
    while cluster.size() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.size() == 0
    assert names(marks, "started") == names(marks, "done")
    assert len(names(marks, "done")) == 1, "the running task finished, no new one was taken"
    assert open_queue(queue).enqueued == 2, "the finished task was deleted, the rest remain"


def test_scale_up_right_after_scale_down_starts_new_workers(setup):
    """A worker still draining after a scale-down does not count toward the next scale-up."""
    *_, make = setup
    _, queue, _dead, cluster, marks = make("rescale")
    enqueue_wave(queue, [partial(slow_tasks.sleeper, str(marks), "long", 5.0)])
    cluster.scale(1)
    deadline = time.monotonic() + 30
    while not names(marks, "started") and time.monotonic() < deadline:
        time.sleep(0.05)
    (busy,) = cluster.pids()
    cluster.scale(0)  # SIGTERM: it finishes its 5 s task first
    assert cluster.pids() == [] and cluster.size() == 1, "draining, not taking tasks"
    cluster.scale(1)
    fresh = cluster.pids()
    assert len(fresh) == 1 and fresh != [busy] and cluster.size() == 2
    cluster.shutdown()
    assert cluster.size() == 0


def test_wave_fails_without_workers(setup):
    *_, make = setup
    _, queue, dead, cluster, marks = make("idle")
    n = enqueue_wave(queue, [partial(slow_tasks.sleeper, str(marks), "x", 0.0)])
    with pytest.raises(WaveFailed, match="no worker has been running"):
        wait_for_wave(queue, "idle", n, dead, alive=cluster.size, no_worker_grace=1.0)


def test_fq_task_file_is_leasable_only_once_whole(tmp_path, monkeypatch):
    """taskqueue's file queue writes a task file in place, so a worker leasing it mid-write
    read broken JSON and the task sat leased, unrun, for a whole lease (a 600 s hang seen in
    CI). Here a second client tries to lease while each task file is being written."""
    import pipeline.queue as q

    url = f"fq://{tmp_path}/queue"
    writes, clashes, early = [], [], []

    def write_and_lease(path: str, data: str, *args, **kwargs) -> None:
        if path.endswith(".json"):
            writes.append(path)
            leased = open_queue(url).api.lease(600, 10)             # while it is written
            clashes.extend(t for t in leased if path.endswith(f"{t['id']}.json"))
            early.extend(leased)
        return real_write(path, data, *args, **kwargs)

    real_write = q.write_file
    monkeypatch.setattr(q, "write_file", write_and_lease)
    tq = open_queue(url)
    assert tq.insert([partial(slow_tasks.always_fails, str(i)) for i in range(3)]) == 3
    assert len(writes) == 3 and clashes == []
    assert len(early) == 2                       # the two tasks written before the last one
    monkeypatch.setattr(q, "write_file", real_write)
    late = open_queue(url).api.lease(600, 10)
    assert sorted(t["payload"][1][0] for t in early + late) == ["0", "1", "2"]
