#!/usr/bin/env bash
# Builds kube-router from Go modules into a cache outside the repository and prints the directory
# holding it. The real node runs only its network policy controller (iptables + ipset): the CNI
# bridge plugin forwards pods' traffic but enforces no NetworkPolicy, and the tests must see one
# enforced. Idempotent: returns at once when the binary exists.
#   dir="$(test/kube-router/build.sh)"   # build logs go to stderr, only the dir to stdout
#
# go.mod pins the version and replaces github.com/vishvananda/netlink: kube-router v2.10.0 requires
# an untagged netlink commit the module proxy does not serve; v1.3.1 (the newest release) builds.
# v2.10.0 is the newest kube-router the proxy serves here (v2.11.x is listed but not downloadable).
# To move to another version: change it in go.mod's require line, run `go mod tidy` here (drop the
# netlink replace if that version's own netlink requirement is served), and the cache key follows.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's#^[[:space:]]*github.com/cloudnativelabs/kube-router/v2 \(v[0-9.]*\).*#\1#p' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no kube-router version in $here/go.mod" >&2; exit 1; }
out="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/kube-router-${version}"
if [[ -x "$out/kube-router" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
exec 9>"$out/.build.lock"
flock 9
if [[ ! -x "$out/kube-router" ]]; then
  echo "build.sh: building kube-router ${version} (~2 min on 2 cores with a cold Go cache)" >&2
  scratch="$(mktemp -d "$out/.build-XXXXXX")"
  trap 'rm -rf "$scratch"' EXIT
  (
    cd "$here"
    # The release's publication time, not now: the same inputs give the same binary.
    built="$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' github.com/cloudnativelabs/kube-router/v2)"
    pkg=github.com/cloudnativelabs/kube-router/v2/pkg/version
    CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false -trimpath" nice -n 10 \
      go build -ldflags="-s -w -X ${pkg}.Version=${version} -X ${pkg}.BuildDate=${built}" \
      -o "$scratch/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router >&2
  )
  mv "$scratch/kube-router" "$out/kube-router"
fi
echo "$out"
