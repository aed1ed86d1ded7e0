# The Tripwire worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agents_contract agents_contract
COPY detectors detectors
COPY streams streams
COPY sinks sinks
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["tripwire"]
CMD ["worker"]
