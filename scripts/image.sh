#!/usr/bin/env bash
# `make image`: promo's container image, built by podman from deploy/Dockerfile.
#
#   scripts/image.sh [TARGET [TAG]]  a target of deploy/Dockerfile (default:
#                                    runtime, tagged promo:latest)
#   scripts/image.sh compose         what deploy/compose.yaml's store, builder,
#                                    replicas and nginx run
#   scripts/image.sh bases           only the base images
#   scripts/image.sh systemd         a Debian with systemd as init, where
#                                    tests/container.rs runs deploy/systemd
#   scripts/image.sh --prebuilt DIR ...
#                                    the programs DIR/promo and DIR/s3s-fs
#                                    (built outside, as make test does)
#                                    instead of compiling them in the image
#
# The Dockerfile names its base images as on Docker Hub. Where they are
# neither in podman's storage nor pullable (no registry answers), they are
# made here from the Debian mirror and imported under those names:
#
#   debian:bookworm-slim      mmdebstrap's minbase variant of bookworm
#   rust:1.95-slim-bookworm   the same, plus gcc and libc6-dev (what the
#                             official image adds for linking), plus this
#                             machine's Rust toolchain (`rustc --print
#                             sysroot`), whose version must be the
#                             Dockerfile's RUST_VERSION, and the local CAs
#                             this machine trusts
#   nginx:<compose's tag>     (compose only) minbase plus Debian's nginx
#
# Both are built once and kept; `podman rmi` them to make them again.
# The mirror is the first of Debian's this machine's apt uses (in
# /etc/apt/sources.list or sources.list.d: scripts/debian-mirror.sh), unless
# DEBIAN_MIRROR names one; with neither, making a base image fails.
# IMAGE_BUILD_ARGS adds options to podman build (--build-arg ...).
#
# podman runs with tests/containers.conf (runc as the runtime, the host's
# open-files limit kept) unless CONTAINERS_CONF names another file: see the
# file for why.
set -euo pipefail
cd "$(dirname "$0")/.."

prebuilt=
if [ "${1:-}" = --prebuilt ]; then
    prebuilt=$2
    shift 2
fi
target=${1:-runtime}
tag=${2:-promo:latest}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/tests/containers.conf}
release=bookworm
rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' deploy/Dockerfile)
# shellcheck source=scripts/debian-mirror.sh
. scripts/debian-mirror.sh

have() { podman image exists "$1"; }

# A registry first, briefly: where one answers, the real image is better.
pull() { timeout 60 podman pull -q "$1" >/dev/null 2>&1; }

make_base() { # name, extra packages, customize hook
    local name=$1 include=$2 hook=${3:-}
    local tar mirror
    if ! mirror=$(debian_mirror); then
        echo "image: $name is neither in podman's storage nor pullable, and needs a Debian mirror" >&2
        exit 1
    fi
    tar=$(mktemp --suffix=.tar)
    # shellcheck disable=SC2064
    trap "rm -f '$tar'" RETURN
    echo "image: making $name from the Debian mirror $mirror (mmdebstrap)"
    local args=(--variant=minbase --quiet --include="ca-certificates${include:+,$include}"
                --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
                --dpkgopt='path-exclude=/usr/share/locale/*'
                --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*')
    [ -n "$hook" ] && args+=(--customize-hook="$hook")
    mmdebstrap "${args[@]}" "$release" "$tar" "$mirror" </dev/null
    shift 3 || true
    podman import -q "$@" "$tar" "$name" >/dev/null
}

debian=docker.io/library/debian:$release-slim
if ! have "$debian" && ! pull "$debian"; then
    make_base "$debian" "" "" --change 'CMD ["bash"]'
fi

rust=docker.io/library/rust:$rust_version-slim-$release
if [ -n "$prebuilt" ]; then
    # The Dockerfile copies them from target/image/, the one part of target/
    # its context holds; debug information stays out, as in its own build.
    rm -rf target/image
    mkdir -p target/image
    for program in promo s3s-fs; do
        strip --strip-debug -o "target/image/$program" "$prebuilt/$program"
    done
    IMAGE_BUILD_ARGS="${IMAGE_BUILD_ARGS:-} --build-arg PROMO_FROM=prebuilt --build-arg S3_FROM=prebuilt"
else
    # The Dockerfile's defaults, said again: buildah (podman 4.3) decides
    # which stages a build needs before it applies an ARG's default, so a
    # `FROM ${PROMO_FROM}` left to its default names an image "build".
    IMAGE_BUILD_ARGS="${IMAGE_BUILD_ARGS:-} --build-arg PROMO_FROM=build --build-arg S3_FROM=s3-build"
fi
# The commit the binary built inside names in promo_build_info.
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || true)
IMAGE_BUILD_ARGS="${IMAGE_BUILD_ARGS:-} --build-arg PROMO_COMMIT=${commit}"
if [ -z "$prebuilt" ] && ! have "$rust" && ! pull "$rust"; then
    sysroot=$(rustc --print sysroot)
    have_version=$(rustc --version | awk '{print $2}')
    case $have_version in
        "$rust_version" | "$rust_version".*) ;;
        *) echo "image: this machine's Rust is $have_version, the Dockerfile wants $rust_version" >&2
           exit 1 ;;
    esac
    # The toolchain goes where a standalone Rust install puts it, /usr/local
    # (rustc finds its libraries beside its binary); documentation stays out.
    # It also trusts the local CAs this machine trusts (a TLS-intercepting
    # proxy's, say), as cargo on this machine does, to fetch crates.
    make_base "$rust" "gcc,libc6-dev" \
        "cp -a '$sysroot/bin' '$sysroot/lib' \"\$1/usr/local/\" && mkdir -p \"\$1/usr/local/cargo/bin\" \
         && { [ ! -d /usr/local/share/ca-certificates ] \
              || cp -a /usr/local/share/ca-certificates/. \"\$1/usr/local/share/ca-certificates/\"; } \
         && chroot \"\$1\" update-ca-certificates >/dev/null" \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]'
fi

build() { # target, tag
    echo "image: podman build --target $1 -t $2"
    local started=$SECONDS size
    # --network host: the build stage fetches crates from crates.io with the
    # host's network, as docker build's default network does. --format
    # docker: the OCI format has no SHELL, and the Dockerfile's pipes rely
    # on the one it sets (pipefail).
    # shellcheck disable=SC2086 # IMAGE_BUILD_ARGS is a list of options.
    podman build -q --network host --format docker ${IMAGE_BUILD_ARGS:-} -f deploy/Dockerfile --target "$1" -t "$2" . >/dev/null
    size=$(podman image inspect "$2" --format '{{.Size}}')
    echo "image: $2 built in $((SECONDS - started)) s, $((size / 1000000)) MB ($size bytes)"
}

case $target in
    bases) ;;
    compose)
        # What deploy/compose.yaml's store, builder, replicas and nginx run.
        build runtime promo:latest
        build s3 promo-s3:latest
        nginx=docker.io/library/nginx:$(sed -n 's/^ *image: nginx://p' deploy/compose.yaml)
        if ! have "$nginx" && ! pull "$nginx"; then
            # Debian's nginx reads /etc/nginx/conf.d/*.conf as the official
            # image does, which is all the compose file relies on.
            make_base "$nginx" "nginx-light" "" --change 'CMD ["nginx", "-g", "daemon off;"]'
        fi
        ;;
    systemd)
        # Debian with systemd as its init, to run deploy/systemd's units in
        # (podman run --systemd=always): no registry offers one. procps
        # (priority important, on every Debian install but minbase) has
        # /bin/kill, which promo-serve.service's ExecReload runs.
        name=localhost/promo-systemd:$release
        if ! have "$name"; then
            make_base "$name" "systemd,systemd-sysv,procps" "" --change 'CMD ["/sbin/init"]'
        fi
        ;;
    *) build "$target" "$tag" ;;
esac
