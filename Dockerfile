FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY replay replay
COPY diff diff
COPY reports reports
COPY schemas schemas
COPY shadowdiff_cli shadowdiff_cli
COPY deploy deploy
RUN pip install --no-cache-dir .
ENTRYPOINT ["shadowdiff"]
