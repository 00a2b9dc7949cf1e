# Image for every arena service in compose.yaml (the command picks the service).
FROM python:3.12-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir ".[postgres]"
ENV ARENA_DATA_DIR=/data
CMD ["arena", "--help"]
