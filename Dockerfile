# tokend image: the API (default), the workers and the migrations all run from it.
#   docker build -t tokend .
#   docker run --rm -p 8080:8080 -e TOKEND_KEY_ENCRYPTION_KEY=... tokend            # API
#   docker run --rm ... tokend tokend work                                           # workers
#   docker run --rm ... tokend tokend db upgrade                                     # migrations
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKEND_HOST=0.0.0.0 \
    TOKEND_PORT=8080

# An unprivileged user with a fixed numeric id (so `runAsNonRoot` checks can see it).
RUN groupadd --system --gid 10001 tokend \
    && useradd --system --uid 10001 --gid tokend --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin tokend

# Install the client library (tokend depends on it) and then tokend, both as regular
# (non-editable) packages, then drop the sources: everything the service needs at run time
# (migrations, Lua scripts) is package data.
COPY . /src
RUN pip install /src/clients/python /src && rm -rf /src

WORKDIR /app
RUN chown tokend:tokend /app
USER 10001:10001

EXPOSE 8080
CMD ["tokend", "serve"]
