"""No secret values in logs, XCom, the Airflow metadata DB or reports.

Secrets are planted where a run can see them: cloud credentials files under the private HOME
(CloudVolume's and CloudFiles' ``aws-secret.json`` / ``google-secret.json``), cloud credentials
in the environment, and Airflow's own secrets (Fernet key, API JWT secret, a connection with a
password). The ``ingest`` DAG then runs for real (``dags.embedded.run_dag``: dag.test on SQLite
with local worker processes) in a subprocess with its own AIRFLOW_HOME. Every byte the run
left behind (its stdout/stderr, the AIRFLOW_HOME with the SQLite DB and task logs, the output
tree with worker logs, report and tables) is searched for each secret. A marker put in the run
config is searched for too, and must be found in the DB's XCom, so the search can find things.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

SECRETS = {
    "aws-file": "AKIAPLANTEDFILESECRET0001",
    "aws-file-key": "planted/secret+key/from-file-0002",
    "google-file": "planted-google-private-key-0003",
    "aws-env": "planted-env-secret-access-key-0004",
    "aws-token": "planted-env-session-token-0005",
    "fernet": "cGxhbnRlZC1mZXJuZXQta2V5LTAwMDYtMDAwMDAwMDA=",
    "jwt": "planted-jwt-secret-0007",
    "conn-password": "planted-connection-password-0008",
}
MARKER = "layer-marker-0009"  # not a secret: it must be found, or the search is blind


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_planted_secret_leaks(tmp_path: Path, private_home: Path) -> None:
    for d in (private_home / ".cloudvolume" / "secrets", private_home / ".cloudfiles" / "secrets"):
        d.mkdir(parents=True, exist_ok=True)
        (d / "aws-secret.json").write_text(json.dumps({
            "AWS_ACCESS_KEY_ID": SECRETS["aws-file"],
            "AWS_SECRET_ACCESS_KEY": SECRETS["aws-file-key"]}))
        (d / "google-secret.json").write_text(json.dumps({
            "type": "service_account", "project_id": "p",
            "private_key": SECRETS["google-file"], "client_email": "x@p.iam"}))
    stack = tmp_path / "stack.npy"
    np.save(stack, np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8))
    conf = {"name": "sec", "output": str(tmp_path / "out"), "chunk_size": [32, 32, 8],
            "storage_chunk_size": [32, 32, 8], "cluster": {"workers": 1},
            "ingest": {"source": str(stack), "layer": MARKER, "downsample_mips": 1}}
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    home = tmp_path / "airflow"
    env = {**os.environ,
           "AWS_SECRET_ACCESS_KEY": SECRETS["aws-env"],
           "AWS_SESSION_TOKEN": SECRETS["aws-token"],
           "AIRFLOW__CORE__FERNET_KEY": SECRETS["fernet"],
           "AIRFLOW__API_AUTH__JWT_SECRET": SECRETS["jwt"],
           "AIRFLOW_CONN_PETARECON_STORE":
               f"aws://user:{SECRETS['conn-password']}@host:1234/?region_name=us-east-1"}
    code = ("import json, sys; from dags.embedded import run_dag; "
            "print(run_dag('ingest', json.load(open(sys.argv[1])), home=sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "conf.json"), str(home)],
                          env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "success" in proc.stdout

    db = home / "airflow.db"
    with sqlite3.connect(db) as conn:
        xcom = [str(v) for (v,) in conn.execute("select value from xcom")]
    assert xcom, "the run left no XCom to search"
    assert any(MARKER in v for v in xcom), "the search cannot see XCom"

    places = {"stdout/stderr": (proc.stdout + proc.stderr).encode()}
    for root in (home, tmp_path / "out"):
        for path in _files(root):
            places[str(path)] = path.read_bytes()
    assert any("workers.log" in p for p in places), "no worker log to search"
    assert any(p.endswith(("report.html", "report.json")) for p in places), "no report"
    assert any(MARKER.encode() in data for data in places.values())
    leaks = [f"{name} in {where}" for where, data in places.items()
             for name, secret in SECRETS.items() if secret.encode() in data]
    assert leaks == []
