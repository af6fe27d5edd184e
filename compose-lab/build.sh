#!/usr/bin/env bash
# Builds statically linked fedgw and fedgw-controlplane binaries and the `fedgw:dev` image
# (FROM scratch) from them. The build context is a temporary directory holding only the
# binaries, so target/ is never sent to the Docker daemon.
#
#   compose-lab/build.sh [IMAGE]      # default fedgw:dev
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-fedgw:dev}
target=x86_64-unknown-linux-gnu

RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p fedgw-gateway -p fedgw-controlplane

out=target/$target/release
for bin in fedgw fedgw-controlplane; do
  # a dynamically linked binary would not start in a scratch image
  if file "$out/$bin" 2>/dev/null | grep -q 'dynamically linked'; then
    echo "build.sh: $out/$bin is dynamically linked" >&2
    exit 1
  fi
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# release builds carry debug info (profile.release debug = 1); the image does not need it
for bin in fedgw fedgw-controlplane; do
  strip -o "$ctx/$bin" "$out/$bin" 2>/dev/null || cp "$out/$bin" "$ctx/$bin"
done
cp compose-lab/Dockerfile "$ctx/"
docker build --quiet -t "$image" "$ctx" >/dev/null
echo "built $image (fedgw $(du -h "$ctx/fedgw" | cut -f1), fedgw-controlplane $(du -h "$ctx/fedgw-controlplane" | cut -f1), static)"
