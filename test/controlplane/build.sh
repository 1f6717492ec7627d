#!/usr/bin/env bash
# Builds the Kubernetes binaries (kube-apiserver for the API-server-only tests; kubelet,
# kube-controller-manager, kube-scheduler and kube-proxy for the real node) and etcd from Go
# modules into a cache outside the repository, and prints the directory holding them.
# Idempotent: returns at once when every binary exists.
#
#   dir="$(test/controlplane/build.sh)"   # build logs go to stderr, only the dir to stdout
#
# Env: PORTCULLIS_CACHE (default ~/.cache/portcullis), PORTCULLIS_BUILD_JOBS (go build -p, default 2).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

k8s_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
cache_root="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/controlplane"
out="$cache_root/k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}"

missing() {
  local name
  for name in "${k8s_binaries[@]}" etcd; do
    [[ -x "$out/$name" ]] || { echo "$name"; return 0; }
  done
  return 1
}

if ! missing >/dev/null; then
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
require_pin "$here/kubernetes/go.mod" "k8s.io/kubernetes" "v${KUBERNETES_VERSION}"
require_pin "$here/etcd/go.mod" "go.etcd.io/etcd/server/v3" "v${ETCD_VERSION}"

command -v go >/dev/null || {
  log "the go toolchain is not on PATH"
  exit 1
}

mkdir -p "$cache_root"
# One build at a time per cache, even when several test runs start together.
exec 9>"$cache_root/.build.lock"
flock 9
if ! missing >/dev/null; then
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
mkdir -p "$out"

todo=()
for name in "${k8s_binaries[@]}"; do
  [[ -x "$out/$name" ]] || todo+=("$name")
done
if ((${#todo[@]})); then
  log "building ${todo[*]} v${KUBERNETES_VERSION} into $out"
  log "  (one go build, so the shared packages compile once: ~6-7 min on 2 cores with a cold Go cache)"
  (
    cd "$here/kubernetes"
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
    pkgs=()
    for name in "${todo[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
    nice -n 10 go build -ldflags="-s -w${x}" -o "$scratch/" "${pkgs[@]}"
  )
  for name in "${todo[@]}"; do mv "$scratch/$name" "$out/$name"; done
  log "kubernetes binaries built after $((SECONDS - started)) s"
fi

if [[ ! -x "$out/etcd" ]]; then
  log "building etcd v${ETCD_VERSION}"
  (
    cd "$here/etcd"
    nice -n 10 go build -ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v${ETCD_VERSION}" \
      -o "$scratch/etcd" go.etcd.io/etcd/server/v3
  )
  mv "$scratch/etcd" "$out/etcd"
  log "etcd built after $((SECONDS - started)) s"
fi

echo "$out"
