# A Python 3.11 base for the nasprune image where Docker Hub cannot be reached (tests/test_docker.py): Debian
# bookworm's own python3 in a virtual environment, on a root filesystem made with debootstrap and `docker import`,
# with CPU torch installed from a local wheel (torch/*.whl in the build context) when one is given, and the
# certificates in ca/*.crt trusted (a network whose proxy signs with its own authority).
#   debootstrap --variant=minbase bookworm DIR http://deb.debian.org/debian
#   tar -C DIR -c . | docker import - nasprune-debian:bookworm
#   docker build -f docker/python-base.Dockerfile -t nasprune-python:3.11 CONTEXT
ARG ROOTFS=nasprune-debian:bookworm
FROM ${ROOTFS}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv \
       ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY torch/ /tmp/torch/
RUN if ls /tmp/torch/*.whl >/dev/null 2>&1; then pip install --no-cache-dir /tmp/torch/*.whl; fi && rm -rf /tmp/torch
