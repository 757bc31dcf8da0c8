#!/usr/bin/env bash
# Builds the one steer image (deploy/Dockerfile, BuildKit: dependencies cached in their own
# layer and cache mounts) and, given a registry reference, pushes it and prints the line that
# pins it in deploy/k8s/kustomization.yaml.
#   scripts/build_image.sh                          # local image steer:<version>
#   scripts/build_image.sh ghcr.io/me/steer:0.1.0   # built, pushed, digest printed
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ref=${1:-steer:$version}
DOCKER_BUILDKIT=1 docker build -f deploy/Dockerfile -t "$ref" .
if [[ "$ref" == */* ]]; then
  docker push "$ref"
  digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$ref")
  echo "pin it: (cd deploy/k8s && kustomize edit set image steer=$ref@${digest#*@})"
fi
