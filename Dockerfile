FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY replay replay
COPY diff diff
COPY reports reports
COPY schemas schemas
COPY shadowdiff shadowdiff
COPY deploy deploy
# the production image carries no demo; docker-compose.yml builds with EXTRAS="[demo]", since
# its worker scores with the demo's scikit-learn models
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS}"
ENTRYPOINT ["shadowdiff"]
