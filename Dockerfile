# mot_lightning: runs the README's main job (demo corpus -> tokenizers -> a CPU-sized MoT) by default.
#
#   docker build -t mot_lightning .
#   docker run --rm --shm-size=1g -v mot_data:/app/data -v mot_runs:/app/runs mot_lightning
#   docker run --rm --gpus all --shm-size=8g -v mot_data:/app/data -v mot_runs:/app/runs mot_lightning \
#       mot fit --config configs/speech/mot.yaml --config configs/model/chameleon-443m.yaml \
#       --config configs/trainer/gpu.yaml
#
# Volumes: what outlives a container (the image holds code and configs only).
#   /app/data  the demo corpus (data/demo, data.demo.dir) and the fitted tokenizers (data/tokenizers,
#              data.tokenizer_files.dir): fitted once, loaded by every later container (the Transfusion
#              KL-VAE takes minutes). Your own shards can live here too.
#   /app/runs  TensorBoard logs, checkpoints and run.json of every run (trainer.logger save_dir).
# Named volumes (mot_data, mot_runs) take the image's owner, the non-root user below. To write into host
# folders instead, run as yourself: --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$PWD/data:/app/data" ...
# --shm-size: DataLoader workers hand batches over through shared memory (Docker's default is 64 MB).
# EXTRAS: optional dependency groups of pyproject.toml, e.g. --build-arg EXTRAS=pretrained.
FROM python:3.11-slim

# A C compiler: Triton (FlexAttention on CUDA) and torch.compile's inductor build kernels at run time.
# (build-essential is a meta-package that follows the base image's Debian release: not pinned.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies alone first: this layer depends on pyproject.toml only, so editing the source reuses it.
ARG EXTRAS=""
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ.get('EXTRAS', '').split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
        > requirements.txt \
    && pip install -r requirements.txt \
    && rm requirements.txt

# Then the project itself (nothing left to resolve: --no-deps).
COPY README.md ./
COPY mot_lightning ./mot_lightning
RUN pip install --no-deps -e .
COPY configs ./configs
COPY benchmarks ./benchmarks

# A non-root user owning only what runs write: the work dir (samples/, export/) and the two volumes.
RUN groupadd --gid 1000 mot \
    && useradd --create-home --uid 1000 --gid 1000 mot \
    && mkdir -p data runs \
    && chown mot:mot /app data runs
USER 1000:1000
VOLUME ["/app/data", "/app/runs"]

CMD ["mot", "fit", "--config", "configs/speech/mot.yaml"]
