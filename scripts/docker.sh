#!/usr/bin/env bash
# Docker Engine for `make images` and the container tests, on a machine where we are root:
#
#   scripts/docker.sh up     install docker.io and debootstrap (Debian) when missing, start
#                            dockerd on the host network only (no bridge, no iptables), wait
#   scripts/docker.sh down   stop the dockerd this script started
#
# Idempotent: `up` with a daemon already answering does nothing. Where apt-get is missing or
# we are not root it says so and exits 0 when a daemon answers anyway, 1 otherwise.
set -euo pipefail
cmd="${1:?usage: scripts/docker.sh up|down}"
state="${MOUTHMAP_DOCKER_STATE:-/var/run/mouthmap-dockerd}"
answers() { docker info --format '{{.ServerVersion}}' >/dev/null 2>&1; }

case "$cmd" in
  up)
    if answers; then
      echo "docker: a daemon already answers ($(docker info --format '{{.ServerVersion}}'))"
      exit 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "docker: no daemon answers and this is not a root Debian machine: start Docker yourself" >&2
      exit 1
    fi
    if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
    fi
    mkdir -p "$state"
    # host network only: every container uses --network host, so no bridge or NAT is needed
    nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$state/dockerd.log" 2>&1 &
    echo $! >"$state/dockerd.pid"
    for _ in $(seq 60); do
      if answers; then
        echo "docker: dockerd $(docker info --format '{{.ServerVersion}}') started (log $state/dockerd.log)"
        exit 0
      fi
      sleep 1
    done
    echo "docker: dockerd did not answer within 60 s; its log:" >&2
    tail -n 30 "$state/dockerd.log" >&2
    exit 1
    ;;
  down)
    if [ -f "$state/dockerd.pid" ]; then
      pid="$(cat "$state/dockerd.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      rm -f "$state/dockerd.pid"
      echo "docker: dockerd stopped"
    else
      echo "docker: nothing started by this script"
    fi
    ;;
  *)
    echo "usage: scripts/docker.sh up|down" >&2
    exit 2
    ;;
esac
