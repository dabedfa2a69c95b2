#!/usr/bin/env bash
# Start a dask scheduler for blocklin pipelines.
#   deploy/dask/scheduler.sh [PORT] [DASHBOARD_PORT]
# Clients and workers connect to tcp://<this host>:PORT.
set -euo pipefail
PORT="${1:-8786}"
DASHBOARD="${2:-8787}"
exec dask scheduler --port "$PORT" --dashboard-address ":$DASHBOARD"
