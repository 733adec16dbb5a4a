# syntax=docker/dockerfile:1
# kronos-stream image: the daemon, the archiver and the trainer (`kronos-stream run|archive|train`).
#
#   docker build -t kronos-stream:0.1.0-cpu .                          # CPU torch wheels
#   docker build --build-arg VARIANT=cuda -t kronos-stream:0.1.0-cuda .  # CUDA torch wheels
#   docker build --build-arg EXTRAS="s3fs" ...                          # fsspec back-ends for s3:// etc.
#
# The CUDA variant takes PyTorch's CUDA wheels, which bundle the CUDA runtime libraries; the node
# provides only the NVIDIA driver (NVIDIA device plugin / container toolkit). Only runtime
# dependencies are installed (never the `dev` extra). The final stage runs nothing at build time
# and runs as the unprivileged user 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG VARIANT=cpu

# --- torch wheel index per variant (selected below with FROM torch-${VARIANT}) ---
FROM ${PYTHON_IMAGE} AS torch-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${PYTHON_IMAGE} AS torch-cuda
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124

# --- build stage: a virtual environment with the project and its runtime dependencies ---
FROM torch-${VARIANT} AS builder
ARG TORCH_SPEC="torch>=2.4"
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/kronos \
 && /opt/kronos/bin/pip install --upgrade pip setuptools wheel \
 && /opt/kronos/bin/pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
WORKDIR /src
COPY . /src
# A regular (non-editable) install: the source tree is not needed at run time.
RUN /opt/kronos/bin/pip install /src ${EXTRAS} \
 && /opt/kronos/bin/python -m compileall -q /opt/kronos/lib \
 && groupadd --system --gid 10001 kronos \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/kronos --no-create-home \
      --shell /usr/sbin/nologin kronos \
 && mkdir -p /home/kronos && chown 10001:10001 /home/kronos

# --- final stage: no package manager run, no compiler, no root ---
FROM ${PYTHON_IMAGE} AS runtime
USER 10001:10001
# The user is defined by the builder (same base image): its passwd/group files carry it over.
COPY --from=builder /etc/passwd /etc/group /etc/
COPY --from=builder --chown=10001:10001 /home/kronos /home/kronos
COPY --from=builder /opt/kronos /opt/kronos
# The root filesystem is read-only in the Helm chart: every cache points at /tmp (an emptyDir).
ENV PATH=/opt/kronos/bin:${PATH} \
    HOME=/home/kronos \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton
WORKDIR /home/kronos
EXPOSE 8080
ENTRYPOINT ["kronos-stream"]
CMD ["run"]
