# mot_lightning: runs the README's main job (demo corpus -> tokenizers -> CPU-sized MoT) by default.
#   docker build -t mot_lightning .
#   docker run --rm --shm-size=1g -v "$PWD/runs:/app/runs" mot_lightning
#   docker run --rm --gpus all --shm-size=8g mot_lightning mot fit --config configs/speech/mot.yaml \
#       --config configs/model/chameleon-443m.yaml --config configs/trainer/gpu.yaml
# --shm-size: DataLoader workers hand batches over through shared memory (Docker's default is 64 MB).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# install dependencies first (cached layer), then the project itself
COPY pyproject.toml README.md ./
COPY mot_lightning ./mot_lightning
RUN pip install -e .

COPY configs ./configs
COPY data/README.md ./data/README.md
COPY benchmarks ./benchmarks

CMD ["mot", "fit", "--config", "configs/speech/mot.yaml"]
