#!/usr/bin/env bash
# Makes a Go builder image from this machine's Go toolchain, for machines
# that cannot pull golang:1.26-bookworm. Usage: deploy/go-image.sh [TAG]
set -euo pipefail
tag=${1:-natserve-go:local}
goroot=$(go env GOROOT)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/root/bin" "$dir/root/tmp" "$dir/root/etc/ssl/certs"
chmod 1777 "$dir/root/tmp"
# A shell for RUN lines, with the libraries it needs.
cp /bin/sh "$dir/root/bin/sh"
for lib in $(ldd /bin/sh | grep -o '/[^ ]*'); do
  mkdir -p "$dir/root$(dirname "$lib")"
  cp -L "$lib" "$dir/root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$dir/root/etc/ssl/certs/" 2>/dev/null || true
mkdir -p "$dir/root/usr/local"
tar -C "$dir/root" -cf "$dir/image.tar" .
tar -C "$(dirname "$goroot")" -rf "$dir/image.tar" --transform "s,^$(basename "$goroot"),usr/local/go," "$(basename "$goroot")"
docker import \
  -c 'ENV PATH=/usr/local/go/bin:/bin' \
  -c 'ENV GOCACHE=/tmp/gocache GOPATH=/tmp/go GOTOOLCHAIN=local' \
  "$dir/image.tar" "$tag" >/dev/null
echo "$tag"
