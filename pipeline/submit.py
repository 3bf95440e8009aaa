"""`petarecon submit` / `cancel --airflow`: talk to an Airflow 3 deployment's REST API v2.

Every call is authenticated: a JWT from ``POST {url}/auth/token`` (the simple auth manager's
login; other auth managers issue the same kind of bearer token) is sent as
``Authorization: Bearer``. Credentials come from arguments or the environment
(``PETARECON_AIRFLOW_USER`` / ``PETARECON_AIRFLOW_PASSWORD``) and are never printed.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

TIMEOUT = 30.0


class AirflowError(RuntimeError):
    """The Airflow API refused or failed a request; the message says which and why."""


def _check(resp: httpx.Response, what: str) -> dict[str, Any]:
    if resp.status_code in (401, 403):
        raise AirflowError(f"{what}: Airflow refused the credentials (HTTP {resp.status_code})")
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise AirflowError(f"{what}: HTTP {resp.status_code}: {str(detail)[:300]}")
    return resp.json() if resp.content else {}


def credentials(user: str | None, password: str | None) -> tuple[str, str]:
    """(user, password) from the arguments or the environment; AirflowError if missing."""
    user = user or os.environ.get("PETARECON_AIRFLOW_USER")
    password = password or os.environ.get("PETARECON_AIRFLOW_PASSWORD")
    if not user or not password:
        raise AirflowError("Airflow credentials missing: give --user and set "
                           "PETARECON_AIRFLOW_PASSWORD (or --password)")
    return user, password


def token(url: str, user: str, password: str) -> str:
    """A JWT access token for ``user`` from the deployment at ``url``."""
    try:
        resp = httpx.post(f"{url.rstrip('/')}/auth/token",
                          json={"username": user, "password": password}, timeout=TIMEOUT)
    except httpx.HTTPError as e:
        raise AirflowError(f"cannot reach Airflow at {url}: {e}") from None
    return _check(resp, "login")["access_token"]


class Airflow:
    """An authenticated client of one deployment's REST API v2."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token(self.url, *credentials(user, password))}"}

    def _call(self, method: str, path: str, what: str, **kw) -> dict[str, Any]:
        try:
            resp = httpx.request(method, f"{self.url}/api/v2{path}", headers=self.headers,
                                 timeout=TIMEOUT, **kw)
        except httpx.HTTPError as e:
            raise AirflowError(f"{what}: cannot reach Airflow at {self.url}: {e}") from None
        return _check(resp, what)

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None,
                unpause: bool = True) -> dict[str, Any]:
        """Start a run of ``dag_id`` with DAG-run conf ``{"config": conf}``; return the run
        (dag_run_id, state, ...). With ``unpause`` the DAG is unpaused first, so it runs."""
        if unpause:
            self._call("PATCH", f"/dags/{dag_id}", f"unpause DAG {dag_id}",
                       json={"is_paused": False})
        body: dict[str, Any] = {"logical_date": None, "conf": {"config": conf}}
        if run_id:
            body["dag_run_id"] = run_id
        return self._call("POST", f"/dags/{dag_id}/dagRuns", f"trigger DAG {dag_id}", json=body)

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """The DAG run's current record."""
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}", f"read run {run_id}")

    def fail(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """Mark the DAG run failed (Airflow stops scheduling its tasks)."""
        return self._call("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", f"cancel run {run_id}",
                          json={"state": "failed"})
