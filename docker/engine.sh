#!/usr/bin/env bash
# A private Docker engine for this machine (no systemd here): `docker/engine.sh start|stop|env`.
#
# start: run dockerd with its own --data-root (under the cache, so image layers survive
#        between CI runs), --exec-root and unix socket, and a runc wrapper as the default
#        runtime that clamps process.oomScoreAdj to >= 0 (the kernel refuses negative values
#        here). Idempotent: an engine already answering is reused. Prints `DOCKER_HOST=...`.
# stop:  stop that dockerd (and its containerd) and wait until it has exited.
# env:   print `DOCKER_HOST=...` only.
set -euo pipefail
CACHE="${PETARECON_CACHE:-$HOME/.cache/petarecon}"
DATA="$CACHE/docker/data"
RUN="${PETARECON_DOCKER_RUN:-/tmp/petarecon-docker}"
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
LOG="$RUN/dockerd.log"
export DOCKER_HOST="unix://$SOCK"

answering() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

write_runtime() {
  # The wrapper edits the OCI bundle's config.json before `runc create|run`, then execs runc.
  cat > "$RUN/runc-clamp" <<'WRAP'
#!/usr/bin/env bash
bundle=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --bundle|-b) bundle="${args[$((i + 1))]}" ;;
    --bundle=*) bundle="${args[$i]#--bundle=}" ;;
  esac
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  python3 - "$bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as f:
    spec = json.load(f)
proc = spec.get("process") or {}
if proc.get("oomScoreAdj", 0) < 0:
    proc["oomScoreAdj"] = 0
    with open(path, "w") as f:
        json.dump(spec, f)
PY
fi
exec /usr/sbin/runc "$@"
WRAP
  chmod +x "$RUN/runc-clamp"
}

start() {
  mkdir -p "$DATA" "$RUN"
  if answering; then echo "DOCKER_HOST=$DOCKER_HOST"; return 0; fi
  command -v dockerd >/dev/null || { echo "dockerd not installed: run tests/infra/install.sh" >&2; exit 1; }
  write_runtime
  cat > "$RUN/daemon.json" <<JSON
{"runtimes": {"petarecon-runc": {"path": "$RUN/runc-clamp"}},
 "default-runtime": "petarecon-runc", "storage-driver": "overlay2",
 "log-driver": "json-file", "iptables": true, "ip-masq": true}
JSON
  rm -f "$SOCK"
  setsid dockerd --config-file "$RUN/daemon.json" --data-root "$DATA" --exec-root "$RUN/exec" \
    --pidfile "$PIDFILE" -H "$DOCKER_HOST" >"$LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    answering && { echo "DOCKER_HOST=$DOCKER_HOST"; return 0; }
    sleep 0.5
  done
  echo "dockerd did not start; see $LOG:" >&2; tail -20 "$LOG" >&2; exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  pid="$(cat "$PIDFILE")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE" "$SOCK"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
