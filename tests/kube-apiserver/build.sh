#!/usr/bin/env bash
# Builds the test Kubernetes API server (tests/kube-apiserver/main.go) from Debian sid
# packages, without touching the system's apt configuration:
#   1. download the Go toolchain, k8s.io/apiserver and its Go dependencies, and kubectl from
#      sid with a private apt config, and unpack them with `dpkg-deb -x` into
#      target/kube-apiserver/root;
#   2. build openapi-gen from that root and generate the OpenAPI definitions (server-side
#      apply needs them);
#   3. build target/kube-apiserver/kube-test-apiserver.
# Idempotent and incremental: a complete root is not downloaded again, and the binary is not
# rebuilt while it is newer than its sources. Any failure prints what failed and exits
# non-zero: CI must fail loudly, never skip silently.
#
# Environment: SKIFF_DEBIAN_MIRROR overrides the Debian mirror (default: the one the machine's
# apt sources use for bookworm).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/target/kube-apiserver"
root="$out/root"
aptdir="$out/apt"
debs="$out/debs"
gopath="$out/gopath"
gocache="$out/gocache"
bin="$out/kube-test-apiserver"
# Where the main package is compiled from: a copy of this folder inside a GOPATH tree, so
# that the generated OpenAPI package next to it can be imported.
pkg="skiff.dev/kube-test-apiserver"
src="$gopath/src/$pkg"
# The Go toolchain inside the root; its version must match the golang-1.NN-go package below.
goversion="1.26"
goroot="$root/usr/lib/go-$goversion"

step_name="setup"
step_start=0
# A failure says which step and which command failed, and the script exits non-zero.
fail() {
  trap - ERR
  echo "kube-apiserver build: FAILED in step '$step_name': $*" >&2
  exit 1
}
trap 'echo "kube-apiserver build: FAILED in step '"'"'$step_name'"'"': \`$BASH_COMMAND\` (line $LINENO) exited $?" >&2' ERR
step() {
  step_name="$1"
  step_start=$(date +%s)
  echo "== kube-apiserver build: $step_name"
}
step_done() {
  echo "== kube-apiserver build: $step_name done in $(($(date +%s) - step_start)) s"
}

for tool in apt-get apt-cache dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is not installed (this script needs a Debian machine)"
done
mkdir -p "$out"

# The Debian mirror the machine already uses (deb822 or one-line sources), else the default.
debian_mirror() {
  if [ -n "${SKIFF_DEBIAN_MIRROR:-}" ]; then
    echo "$SKIFF_DEBIAN_MIRROR"
    return
  fi
  local m=""
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
  if [ -z "$m" ]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\/.*\/debian\/?$/) { print $i; exit } }')
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

# ---- 1. download and unpack ------------------------------------------------------------
# The root is complete once every package is unpacked; the marker says which recipe made it
# (bump root_recipe when the package selection below changes) and lists the packages.
root_recipe="skiff-kube-root 1"
marker="$root/.skiff-root-complete"
if [ -f "$marker" ] && [ "$(head -1 "$marker")" = "$root_recipe" ] &&
  [ -x "$goroot/bin/go" ] && [ -x "$root/usr/bin/kubectl" ]; then
  echo "== kube-apiserver build: root is complete ($(($(wc -l <"$marker") - 1)) packages), no download"
else
  step "download sid packages"
  mirror=$(debian_mirror)
  echo "mirror: $mirror"
  mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$debs"
  echo "deb $mirror sid main" >"$aptdir/sources.list"
  apt_opts=(
    -o "Dir::Etc::sourcelist=$aptdir/sources.list"
    -o "Dir::Etc::sourceparts=/nonexistent"
    -o "Dir::State::Lists=$aptdir/lists"
    -o "Dir::Cache=$aptdir/cache"
    -o "Dir::State::status=/dev/null"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
  )
  apt-get "${apt_opts[@]}" -qq --error-on=any update || fail "apt-get update of sid from $mirror"
  # Everything k8s.io/apiserver, openapi-gen and the etcd server need, recursively; keep the
  # Go source packages (golang-*), drop the toolchain metapackages (they would pull a second
  # Go) and everything that is not Go source (libc, protobuf compiler, ...).
  apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances \
    golang-k8s-apiserver-dev golang-k8s-kube-openapi-dev golang-etcd-server-dev \
    "golang-$goversion-go" "golang-$goversion-src" >"$aptdir/depends.txt" ||
    fail "apt-cache depends"
  grep -v '^ ' "$aptdir/depends.txt" | grep '^golang-' |
    grep -Ev '^golang-(go|src|any|doc)$|^golang-1\.[0-9]+-(go|src|doc)$|^golang-golang-x-tools$' \
      >"$aptdir/packages.txt" || true
  {
    echo "golang-$goversion-go"
    echo "golang-$goversion-src"
    echo kubectl
    echo kubernetes-client
  } >>"$aptdir/packages.txt"
  sort -u -o "$aptdir/packages.txt" "$aptdir/packages.txt"
  grep -qx golang-k8s-apiserver-dev "$aptdir/packages.txt" ||
    fail "golang-k8s-apiserver-dev is not in sid any more"
  echo "$(wc -l <"$aptdir/packages.txt") packages"
  rm -f "$debs"/*.deb
  (cd "$debs" && xargs apt-get "${apt_opts[@]}" -qq download <"$aptdir/packages.txt") ||
    fail "apt-get download (see the package list in $aptdir/packages.txt)"
  echo "$(du -sh "$debs" | cut -f1) of packages"
  step_done

  step "unpack"
  rm -rf "$root"
  mkdir -p "$root"
  for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$root" || fail "dpkg-deb -x $deb"
  done
  [ -x "$goroot/bin/go" ] || fail "no Go toolchain at $goroot/bin/go after unpacking"
  [ -x "$root/usr/bin/kubectl" ] || fail "no kubectl at $root/usr/bin/kubectl after unpacking"
  { echo "$root_recipe"; (cd "$debs" && ls -1 ./*.deb | sed 's|^\./||'); } >"$marker"
  rm -rf "$debs" "$aptdir/cache"
  step_done
fi

# ---- Go environment: GOPATH mode, the root's toolchain, no network ------------------------
export GO111MODULE=off GOTOOLCHAIN=local GOPROXY=off GOFLAGS= CGO_ENABLED=0
export GOROOT="$goroot"
export GOPATH="$gopath:$root/usr/share/gocode"
export GOCACHE="$gocache"
export PATH="$goroot/bin:$PATH"
go version >/dev/null || fail "the Go toolchain in $goroot does not run"

# The sources of the binary: the Go files and go.mod in this folder, this script and the root.
sources=("$here"/*.go "$here"/go.mod "$here/build.sh" "$marker")
newest_source=$(ls -t "${sources[@]}" | head -1)
if [ -x "$bin" ] && [ "$bin" -nt "$newest_source" ]; then
  echo "== kube-apiserver build: $bin is up to date"
  exit 0
fi

# Copy the sources into the GOPATH tree (the generated package lands beside them).
rm -rf "$src"
mkdir -p "$src"
cp "$here"/*.go "$here"/go.mod "$src/"

# ---- 2. openapi-gen --------------------------------------------------------------------
step "openapi-gen"
go build -o "$out/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen || fail "building openapi-gen"
# The API groups the server serves, plus the apimachinery types they refer to.
openapi_inputs=(
  k8s.io/apimachinery/pkg/apis/meta/v1
  k8s.io/apimachinery/pkg/runtime
  k8s.io/apimachinery/pkg/version
  k8s.io/apimachinery/pkg/api/resource
  k8s.io/apimachinery/pkg/util/intstr
  k8s.io/api/core/v1
  k8s.io/api/discovery/v1
  k8s.io/api/coordination/v1
  k8s.io/api/rbac/v1
  k8s.io/api/apps/v1
  k8s.io/api/events/v1
)
(cd "$src" && "$out/openapi-gen" \
  --output-dir "$src/openapi" \
  --output-pkg "$pkg/openapi" \
  --output-file zz_generated.openapi.go \
  --report-filename /dev/null \
  --go-header-file /dev/null \
  "${openapi_inputs[@]}") || fail "openapi-gen"
step_done

# ---- 3. build ---------------------------------------------------------------------------
step "go build"
# The k8s.io/apiserver version (0.36.x) is Kubernetes 1.36.x; report it as the server version.
api_version=$(sed -n 's/.*golang-k8s-apiserver-dev_\([0-9.]*\).*/\1/p' "$marker" | head -1)
[ -n "$api_version" ] || fail "no golang-k8s-apiserver-dev version in $marker"
git_version="v1.${api_version#0.}"
minor=$(echo "$api_version" | cut -d. -f2)
(cd "$src" && go build -o "$bin.tmp" \
  -ldflags "-X k8s.io/component-base/version.gitVersion=$git_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
  .) || fail "go build"
mv "$bin.tmp" "$bin"
echo "built $bin ($git_version, $(du -h "$bin" | cut -f1))"
step_done
