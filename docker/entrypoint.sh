#!/usr/bin/env bash
# Default command of the memseg-kit container (see ../Dockerfile): the same two steps as `make demo`.
#   1. `python -m memseg.demo prepare`: synthetic dataset if missing, quick demo model if none is
#      cached under runs/ (device: $MEMSEG_DEVICE, default auto = the GPU when the container has one);
#   2. Voila serves the demo notebook on 0.0.0.0:$PORT (default 8866).
# Extra arguments are passed on to voila (e.g. --debug).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${MEMSEG_DATA:-data/synthetic}"
PORT="${PORT:-8866}"

python -c "import torch; print('memseg demo: torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
python -m memseg.demo prepare --data "$DATA"
exec voila "notebooks/[demo] model inference.ipynb" --port="$PORT" --Voila.ip=0.0.0.0 --no-browser "$@"
