#!/usr/bin/env bash
# Builds kube-apiserver and etcd from Go modules into a cache outside the repository and
# prints the directory holding them. Idempotent: returns at once when both binaries exist.
#
#   dir="$(test/controlplane/build.sh)"   # build logs go to stderr, only the dir to stdout
#
# Env: PORTCULLIS_CACHE (default ~/.cache/portcullis), PORTCULLIS_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/controlplane"
out="$cache_root/k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}"

if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"
  exit 0
fi

log() { echo "build.sh: $*" >&2; }

# The committed modules must pin what versions.env says, or the cache key would lie.
require_pin() {
  local gomod="$1" module="$2" version="$3"
  if ! grep -qE "^[[:space:]]*(require[[:space:]]+)?${module//./\\.}[[:space:]]+${version//./\\.}([[:space:]]|$)" "$gomod"; then
    log "$gomod does not require $module $version (from versions.env); run test/controlplane/update-modules.sh"
    exit 1
  fi
}
require_pin "$here/kube-apiserver/go.mod" "k8s.io/kubernetes" "v${KUBERNETES_VERSION}"
require_pin "$here/etcd/go.mod" "go.etcd.io/etcd/server/v3" "v${ETCD_VERSION}"

command -v go >/dev/null || {
  log "the go toolchain is not on PATH"
  exit 1
}

mkdir -p "$cache_root"
# One build at a time per cache, even when several test runs start together.
exec 9>"$cache_root/.build.lock"
flock 9
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"
  exit 0
fi

# Binaries land in a scratch dir first and are moved in at the end, so an interrupted build
# never leaves a half-written binary that the fast path above would accept.
scratch="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath -p=${PORTCULLIS_BUILD_JOBS:-2}"
started=$SECONDS

if [[ ! -x "$out/kube-apiserver" ]]; then
  log "building kube-apiserver v${KUBERNETES_VERSION} (takes many minutes on 2 cores)"
  (
    cd "$here/kube-apiserver"
    # Upstream stamps the version with -X (hack/lib/version.sh); without it /version says
    # v0.0.0-master and version-gated code in clients would take the wrong branch.
    minor="${KUBERNETES_VERSION#*.}"
    minor="${minor%%.*}"
    # The release's publication time, not now: the same inputs give the same binary.
    build_date="$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)"
    x=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      x+=" -X ${pkg}.gitVersion=v${KUBERNETES_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
      x+=" -X ${pkg}.gitCommit= -X ${pkg}.gitTreeState=archive -X ${pkg}.buildDate=${build_date}"
    done
    nice -n 10 go build -ldflags="-s -w${x}" -o "$scratch/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  )
  mkdir -p "$out"
  mv "$scratch/kube-apiserver" "$out/kube-apiserver"
  log "kube-apiserver built after $((SECONDS - started)) s"
fi

if [[ ! -x "$out/etcd" ]]; then
  log "building etcd v${ETCD_VERSION}"
  (
    cd "$here/etcd"
    nice -n 10 go build -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v${ETCD_VERSION}" \
      -o "$scratch/etcd" go.etcd.io/etcd/server/v3
  )
  mkdir -p "$out"
  mv "$scratch/etcd" "$out/etcd"
  log "etcd built after $((SECONDS - started)) s"
fi

echo "$out"
