#!/usr/bin/env bash
# A Python base image for the nasprune image without Docker Hub (tests/test_docker.py): a Debian bookworm root
# filesystem from debootstrap, imported, then docker/python-base.Dockerfile (python3 in a venv, CPU torch from a
# local wheel if one is found in $PIP_FIND_LINKS, the host's certificate authorities trusted).
#     bash docker/build-base.sh [TAG]        # default nasprune-python:3.11; then
#     docker build --build-arg BASE=nasprune-python:3.11 --build-arg TORCH=torch==2.13.0 -t nasprune .
set -euo pipefail
tag=${1:-nasprune-python:3.11}
rootfs_image=nasprune-debian:bookworm
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! docker image inspect "$rootfs_image" >/dev/null 2>&1; then
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$work/rootfs" -c . | docker import - "$rootfs_image" >/dev/null
    rm -rf "$work/rootfs"
fi
mkdir -p "$work/ctx/torch" "$work/ctx/ca"
for dir in ${PIP_FIND_LINKS:-}; do
    cp "$dir"/torch-2.13.0+cpu-cp311-*.whl "$work/ctx/torch/" 2>/dev/null || true
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt "$work/ctx/ca/host.crt"; fi
docker build -q -f "$here/python-base.Dockerfile" --build-arg ROOTFS="$rootfs_image" -t "$tag" "$work/ctx" >/dev/null
echo "$tag"
