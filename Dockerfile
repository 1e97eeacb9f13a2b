# memseg-kit on NVIDIA's PyTorch container: the Voila demo on port 8866, using the GPU.
#
#   docker build -t memseg-kit .
#   docker run --gpus all --shm-size=2g -p 8866:8866 memseg-kit           # demo -> the http://localhost:8866/?token=... it prints
#       (-e MEMSEG_TOKEN=<secret> to choose the token; -e MEMSEG_NO_TOKEN=1 to serve without one: see docker/entrypoint.sh)
#   docker run --gpus all --shm-size=2g -p 8888:8888 memseg-kit \
#       jupyter lab --ip=0.0.0.0 --port=8888 --allow-root --no-browser notebooks/   # JupyterLab instead
#
# Keep the dataset, the trained demo model and real textures between runs with volumes, e.g.
#   -v "$PWD/data:/workspace/memseg-kit/data" -v "$PWD/runs:/workspace/memseg-kit/runs"
#   (DTD textures: put them at data/dtd, or mount them anywhere and set -e MEMSEG_DTD=/that/path)
#
# Base image: NGC PyTorch 26.08 (August 2026), the newest release we could confirm. Downstream
# projects pinning it report PyTorch 2.14.0a0 (NVIDIA build) with torchvision 0.29 on CUDA 13.x and
# Python 3.12; like every CUDA 12/13 NGC release it is built for Hopper (sm_90: H100/H200, bf16,
# TF32) besides Ampere/Ada/Blackwell. It needs a host driver recent enough for CUDA 13 (see NVIDIA's
# release notes for the exact minimum). Bump the tag deliberately, and re-run the GPU checks.
FROM nvcr.io/nvidia/pytorch:26.08-py3

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MEMSEG_DEVICE=auto

WORKDIR /workspace/memseg-kit
COPY . .

# Install memseg with its notebook extra on top of the container's own torch, never replacing it:
# the exact installed torch/torchvision distribution versions become pip constraints (in addition to NVIDIA's
# /etc/pip/constraint.txt), so timm or any other dependency can only accept them; a conflict fails
# the build instead of pulling a second torch. Editable, so the notebooks/configs beside the
# package are the code that runs (and a source tree mounted over /workspace/memseg-kit is used).
RUN set -eux; \
    python -c "from importlib.metadata import version; print('torch==' + version('torch')); print('torchvision==' + version('torchvision'))" > /tmp/keep-torch.txt; \
    cat /tmp/keep-torch.txt; \
    python -m pip install --constraint /tmp/keep-torch.txt -e ".[notebooks]"; \
    python -c "import torch, torchvision, timm, voila, memseg; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'timm', timm.__version__)"; \
    python -c "from importlib.metadata import version; pins = dict(l.strip().split('==') for l in open('/tmp/keep-torch.txt')); assert pins == {p: version(p) for p in pins}, 'torch was replaced'"; \
    rm /tmp/keep-torch.txt; \
    chmod +x docker/entrypoint.sh

# 8866: Voila demo (default command); 8888: JupyterLab (override command above).
EXPOSE 8866 8888

# NVIDIA's entrypoint (banner, driver checks) stays; it runs this command: prepare the demo
# (synthetic data + a quick model, trained once on the GPU and cached under runs/), then serve Voila.
CMD ["/workspace/memseg-kit/docker/entrypoint.sh"]
