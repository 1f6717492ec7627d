#!/usr/bin/env bash
# Builds the helm binary from Go modules into a cache outside the repository, keyed by version, and
# prints the directory holding it. Idempotent: returns at once when the binary exists.
#   dir="$(test/helm/build.sh)"
set -euo pipefail
HELM_VERSION=4.3.1
out="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/helm-v${HELM_VERSION}"
if [[ -x "$out/helm" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
exec 9>"$out/.build.lock"
flock 9
if [[ ! -x "$out/helm" ]]; then
  echo "build.sh: building helm v${HELM_VERSION}" >&2
  scratch="$(mktemp -d "$out/.build-XXXXXX")"
  trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && GOBIN="$scratch" CGO_ENABLED=0 GOFLAGS=-buildvcs=false nice -n 10 \
    go install -trimpath -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=v${HELM_VERSION}" \
    "helm.sh/helm/v4/cmd/helm@v${HELM_VERSION}" >&2)
  mv "$scratch/helm" "$out/helm"
fi
echo "$out"
