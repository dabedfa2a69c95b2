#!/usr/bin/env bash
# Apply every new row batch waiting in an inbox directory to a pipeline, oldest first.
#   deploy/schedule/refresh.sh SPEC INBOX
# Each batch (.parquet, .csv, .npy) is refreshed with `blocklin refresh SPEC --append`,
# then moved to INBOX/applied/. Retrying is harmless: a batch already applied is
# skipped by its fingerprint. If another run holds the pipeline's lock (exit code 3)
# the script stops quietly and the next tick picks the batches up.
set -euo pipefail
SPEC="${1:?usage: refresh.sh SPEC INBOX}"
INBOX="${2:?usage: refresh.sh SPEC INBOX}"
BLOCKLIN="${BLOCKLIN:-blocklin}"
mkdir -p "$INBOX/applied"
shopt -s nullglob
for batch in $(ls -1tr "$INBOX"/*.parquet "$INBOX"/*.csv "$INBOX"/*.npy 2>/dev/null); do
    set +e
    "$BLOCKLIN" refresh "$SPEC" --append "$batch"
    rc=$?
    set -e
    case "$rc" in
        0) mv "$batch" "$INBOX/applied/" ;;
        3) echo "pipeline busy (locked); will retry next time" >&2; exit 0 ;;
        *) echo "refresh with $batch failed (exit $rc)" >&2; exit "$rc" ;;
    esac
done
