# One image for the gateway, the stream worker and the sinks (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md topics.yaml ./
COPY vdip ./vdip
COPY gateway ./gateway
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENV VDIP_STACK_DIR=/data VDIP_WORKER_DATADIR=/data/worker
ENTRYPOINT ["vdip"]
