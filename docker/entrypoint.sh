#!/usr/bin/env bash
# Default command of the memseg-kit container (see ../Dockerfile): the same two steps as `make demo`.
#   1. `python -m memseg.apps.demo prepare`: synthetic dataset if missing, quick demo model if none is
#      cached under runs/ (device: $MEMSEG_DEVICE, default auto = the GPU when the container has one);
#   2. Voila serves the demo notebook on $MEMSEG_HOST:$PORT (default 0.0.0.0:8866), behind a token:
#      MEMSEG_TOKEN (or VOILA_TOKEN) when set, else a random one printed at start (open the printed
#      URL once; the browser keeps a cookie). MEMSEG_NO_TOKEN=1 serves without one (explicit opt-out:
#      anyone who reaches the port can then run code-backed kernels of ~1 GB each); any other non-empty
#      MEMSEG_NO_TOKEN value stops at once, on every host. On a loopback host (127.0.0.1, localhost, ::1:
#      `make demo`'s default, which runs this script too) only this machine can connect, and no token is
#      asked for. A token must be at least 16 characters that fit in a URL; it reaches voila through its
#      environment (JUPYTER_TOKEN, readable by this user only), never its command line (the process list).
# Extra arguments are passed on to voila (e.g. --debug).
# Sourcing this file (tests/test_dashboard.py) defines the functions without running anything.
set -euo pipefail

MIN_TOKEN_LENGTH=16

# Decide how voila is protected; sets VOILA_AUTH_ARGS (an array: empty when opted out or on a loopback
# host, else --Voila.auto_token=True: voila then takes the token from JUPYTER_TOKEN), VOILA_TOKEN_VALUE (the
# token to export as JUPYTER_TOKEN right before voila starts; empty without one) and TOKEN_NOTE (the line
# that tells the user how to open the page).
# Args: the port, the host (default 0.0.0.0). A bad setting prints a one-line error and returns 2.
voila_token_args() {
    local port="$1" host="${2:-0.0.0.0}" token source opt_out="${MEMSEG_NO_TOKEN:-}"
    VOILA_AUTH_ARGS=()
    VOILA_TOKEN_VALUE=""
    case "$opt_out" in  # exactly 1, or unset/empty: anything else stops, whatever the host (README)
        1|"") ;;
        *)
            echo "memseg demo: error: MEMSEG_NO_TOKEN=$opt_out; expected 1 (serve without a token) or unset (require one)" >&2
            return 2 ;;
    esac
    case "$host" in
        127.0.0.1|localhost|::1)
            TOKEN_NOTE="memseg demo: open http://$host:$port/ (served on this machine only, no token; MEMSEG_HOST=0.0.0.0 to serve a room, behind a token)"
            return 0 ;;
    esac
    if [[ "$opt_out" == 1 ]]; then
        TOKEN_NOTE="memseg demo: WARNING: MEMSEG_NO_TOKEN=1: serving WITHOUT a token on port $port; anyone who can reach it can use the demo"
        return 0
    fi
    if [[ -n "${MEMSEG_TOKEN:-}" ]]; then
        token="$MEMSEG_TOKEN" source="MEMSEG_TOKEN"
    elif [[ -n "${VOILA_TOKEN:-}" ]]; then
        token="$VOILA_TOKEN" source="VOILA_TOKEN"
    else
        token="$(python -c 'import secrets; print(secrets.token_urlsafe(24))')" source=""
    fi
    if [[ ! "$token" =~ ^[A-Za-z0-9._~-]+$ ]]; then
        echo "memseg demo: error: $source holds characters that do not fit in a URL; expected letters, digits and - _ . ~" >&2
        return 2
    fi
    if (( ${#token} < MIN_TOKEN_LENGTH )); then
        echo "memseg demo: error: $source is ${#token} characters long; expected at least $MIN_TOKEN_LENGTH (letters, digits and - _ . ~), or unset it for a generated one" >&2
        return 2
    fi
    VOILA_AUTH_ARGS=("--Voila.auto_token=True")  # the token itself goes through the environment, not argv
    VOILA_TOKEN_VALUE="$token"
    if [[ -n "$source" ]]; then
        TOKEN_NOTE="memseg demo: open http://localhost:$port/?token=<your $source> (or this host's address instead of localhost)"
    else
        TOKEN_NOTE="memseg demo: open http://localhost:$port/?token=$token (token generated at start; set MEMSEG_TOKEN to choose one, MEMSEG_NO_TOKEN=1 to serve without)"
    fi
}

main() {
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    local data="${MEMSEG_DATA:-data/synthetic}" port="${PORT:-8866}" host="${MEMSEG_HOST:-0.0.0.0}"
    voila_token_args "$port" "$host"  # a bad setting stops here (set -e), before any work
    echo "$TOKEN_NOTE"

    python -c "import torch; print('memseg demo: torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
    python -m memseg.apps.demo prepare --data "$data"
    echo "$TOKEN_NOTE"  # again: training output may have scrolled the first one away
    if [[ -n "$VOILA_TOKEN_VALUE" ]]; then
        export JUPYTER_TOKEN="$VOILA_TOKEN_VALUE"  # /proc/<pid>/environ: this user only; the command line: everyone
    else
        unset JUPYTER_TOKEN JUPYTER_TOKEN_FILE
    fi
    exec voila "notebooks/[demo] model inference.ipynb" --port="$port" --Voila.ip="$host" --no-browser \
        "${VOILA_AUTH_ARGS[@]}" "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
