#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager into $CONTROLPLANE_BIN (default
# .controlplane/<kube>-etcd-<etcd>/bin at the repository root, git-ignored). Does nothing when all three are
# there and were built from the same go.mod/go.sum/main files (a stamp records their hash).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
# shellcheck source=versions.env
. "$here/versions.env"

out="${CONTROLPLANE_BIN:-$root/.controlplane/${KUBE_VERSION}-etcd-${ETCD_VERSION}/bin}"
stamp_value=$(cd "$here" && cat versions.env build.sh kube/go.mod kube/go.sum etcd/go.mod etcd/go.sum \
    kube/cmd/*/main.go etcd/main.go | sha256sum | cut -c1-16)
if [ -x "$out/etcd" ] && [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] \
        && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp_value" ]; then
    exit 0
fi
mkdir -p "$out"
rm -f "$out/.stamp"

major_minor="${KUBE_VERSION#v}"
major="${major_minor%%.*}"
minor="${major_minor#*.}"; minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X '${pkg}.gitVersion=${KUBE_VERSION}' -X '${pkg}.gitMajor=${major}' -X '${pkg}.gitMinor=${minor}'"
    ldflags+=" -X '${pkg}.gitTreeState=clean' -X '${pkg}.buildDate=${build_date}'"
done

export CGO_ENABLED=0
start=$(date +%s)
echo "controlplane: building kube-apiserver and kube-controller-manager ${KUBE_VERSION}, etcd ${ETCD_VERSION} into ${out}"
(cd "$here/kube" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ldflags" \
    -o "$out/kube-apiserver" ./cmd/kube-apiserver)
(cd "$here/kube" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ldflags" \
    -o "$out/kube-controller-manager" ./cmd/kube-controller-manager)
(cd "$here/etcd" && go build -trimpath -ldflags="-s -w" -o "$out/etcd" .)
echo "$stamp_value" > "$out/.stamp"
echo "controlplane: built in $(( $(date +%s) - start )) s"
