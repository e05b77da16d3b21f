#!/usr/bin/env bash
# Register this host's deployments to the fleet's work pool (docs/scaling.md, step 4). Run it on the
# bot host after installing or upgrading the runbook, and after changing /etc/runbook/runbook.toml.
# It is idempotent: each run updates the same deployments and their triggers.
set -euo pipefail
set -a; . /etc/runbook/runbook.env; set +a
host="$(hostname -s)"
cd /opt/runbook
# The queue for this host, unless it exists (registering a deployment to a missing queue creates it too).
.venv/bin/prefect work-queue inspect "$host" --pool runbook >/dev/null 2>&1 \
  || .venv/bin/prefect work-queue create "$host" --pool runbook
# Every deployment, named <flow>-<host>, queued for this host's worker, triggered only by the alerts
# of the bots in this host's configuration.
.venv/bin/runbook deploy --pool runbook --queue "$host" --suffix "$host" --config "$RUNBOOK_CONFIG"
