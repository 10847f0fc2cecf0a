#!/usr/bin/env bash
# Installs what warmpool needs on Debian 12, idempotently, and makes sure a
# working criu is present. Prints each step. Safe to run again.
#
#   deploy/install-deps.sh [--prefix DIR]
#
# DIR (default /opt/warmpool) receives the private criu when the system one
# fails `criu check` (Debian 12's criu 3.17 cannot handle Linux >= 6.x vDSO).
set -euo pipefail

PREFIX=/opt/warmpool
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "install-deps: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

say() { printf 'install-deps: %s\n' "$*"; }

PKGS=(
    build-essential pkg-config clang libclang-rt-14-dev
    libev-dev libhiredis-dev libcurl4-openssl-dev libjansson-dev
    libprotobuf-c-dev criu libcmocka-dev node-llhttp
    # the private criu's own loader and libraries, written into its binary
    patchelf
    redis-server iptables nftables busybox-static python3 iproute2 procps
    wrk ca-certificates libssl-dev curl libseccomp-dev strace
    # repositories: git in the sandboxes (host rootfs) and for the test git host
    git
    # test_dashboard: promtool and a real prometheus on the rules, headless
    # chromium rendering /dashboard (a screenshot, figures checked)
    prometheus chromium
    # test_install: systemd-analyze verifies the units; test_egress: the
    # openssl CLI makes its test CA
    systemd openssl
)

[ "$(id -u)" = 0 ] || { echo "install-deps: must run as root" >&2; exit 1; }

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages: all present"
fi

# Node.js runs the official SDK as a test client. Machines of this kind
# ship Node 20 from their own apt source; elsewhere Debian's is enough.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "installing Node.js and npm from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

# --- criu ----------------------------------------------------------------
# CRIU keeps its kernel-feature cache in /run; without a tmpfs there it
# re-probes the kernel on every call (~30 ms per restore).
if ! mountpoint -q /run || [ "$(stat -f -c %T /run)" != tmpfs ]; then
    say "/run is not a tmpfs: mounting one (keeping what was there)"
    tmp=$(mktemp -d)
    cp -a /run/. "$tmp"/ 2>/dev/null || true
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
    cp -a "$tmp"/. /run/ 2>/dev/null || true
    rm -rf "$tmp"
fi

WRAPPER="$PREFIX/bin/criu"
# criu from Debian trixie needs glibc >= 2.38: a copy of its binary names the
# private loader as its interpreter and the private libraries as its rpath, so
# every restore execs criu alone (a shell wrapper running the loader cost each
# restore a shell and an exec more).
private_criu_link() {  # $1: the private root
    local lib="$1/usr/lib/x86_64-linux-gnu"
    cp "$1/usr/sbin/criu" "$1/usr/sbin/criu.wp.new"
    patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$lib" \
        "$1/usr/sbin/criu.wp.new"
    mv "$1/usr/sbin/criu.wp.new" "$1/usr/sbin/criu.wp"
    mkdir -p "$PREFIX/bin"
    ln -sfn "$1/usr/sbin/criu.wp" "$WRAPPER"
}
if /usr/sbin/criu check >/dev/null 2>&1; then
    say "system criu passes 'criu check': using /usr/sbin/criu"
    mkdir -p "$PREFIX/bin"
    ln -sf /usr/sbin/criu "$WRAPPER"
elif [ -x "$WRAPPER" ] && [ "$(head -c 2 "$WRAPPER")" != "#!" ] &&
     "$WRAPPER" check >/dev/null 2>&1; then
    say "private criu at $WRAPPER passes 'criu check'"
elif [ -x "$PREFIX/criu/usr/sbin/criu" ] && private_criu_link "$PREFIX/criu" &&
     "$WRAPPER" check >/dev/null 2>&1; then
    say "private criu in $PREFIX/criu linked to its own loader (was a shell wrapper)"
else
    say "system criu fails 'criu check' on $(uname -r): fetching the next Debian release's criu into $PREFIX/criu"
    root="$PREFIX/criu"
    state=$(mktemp -d)
    trap 'rm -rf "$state"' EXIT
    # The mirror comes from this machine's own apt sources, never from the repo.
    uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | awk '{print $2}' | grep -v security | grep -i debian | head -1 || true)
    [ -n "$uri" ] || uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null \
            | awk '{print $2}' | grep -v security | grep -i debian | head -1 || true)
    [ -n "$uri" ] || { echo "install-deps: no Debian mirror in /etc/apt sources" >&2; exit 1; }
    mkdir -p "$state"/{lists/partial,cache/archives/partial,etc/preferences.d,etc/apt.conf.d}
    cat >"$state/etc/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main
SRC
    opts=(-o Dir::State="$state" -o Dir::State::Lists="$state/lists"
          -o Dir::Cache="$state/cache" -o Dir::Etc::SourceList="$state/etc/sources.list"
          -o Dir::Etc::SourceParts=/dev/null -o Dir::Etc::Preferences="$state/etc/preferences"
          -o Dir::Etc::PreferencesParts="$state/etc/preferences.d"
          -o Dir::State::status=/dev/null -o APT::Architecture=amd64
          -o Acquire::Languages=none)
    say "reading trixie package lists from $uri"
    apt-get "${opts[@]}" update -qq
    debs=(criu libcompel1 libc6 libgnutls30t64 libnftables1 libnet1 libnl-3-200
          libprotobuf-c1 libbsd0 libuuid1 libmd0 libp11-kit0 libidn2-0 libunistring5
          libtasn1-6 libnettle8t64 libhogweed6t64 libgmp10 libffi8 libmnl0 libnftnl11
          libxtables12 libjansson4 libedit2 libtinfo6 libgcc-s1 libcap2 libzstd1)
    (cd "$state" && apt-get "${opts[@]}" download "${debs[@]}" >/dev/null)
    rm -rf "$root.new"
    mkdir -p "$root.new"
    for d in "$state"/*.deb; do
        say "  unpacking $(basename "$d")"
        dpkg -x "$d" "$root.new"
    done
    rm -rf "$root"
    mv "$root.new" "$root"
    private_criu_link "$root"
    "$WRAPPER" check >/dev/null 2>&1 || {
        echo "install-deps: the private criu fails 'criu check':" >&2
        "$WRAPPER" check >&2 || true
        exit 1
    }
fi
say "criu: $("$WRAPPER" --version | head -1) via $WRAPPER"

# --- how criu runs here ------------------------------------------------------
# `criu check` passing is not enough: on some CPUs the hardware breakpoint
# criu stops a task with never fires and every dump hangs. Dump and restore
# a throwaway process under a deadline, in the default mode and then with
# CRIU_FAULT=130 (no breakpoints); the node does the same at start-up (and
# caches it), `warmpool doctor` prints it. The answer is kept per criu,
# kernel and CPU, so a re-run does not wait on a hang again.
probe_mode() {  # $1: value of CRIU_FAULT ("" for the default mode); prints why it failed
    local d pid rc
    d=$(mktemp -d /tmp/criu-install-probe.XXXXXX)
    setsid sleep 1000 </dev/null >/dev/null 2>&1 &
    pid=$!
    env -u CRIU_CONFIG_FILE ${1:+CRIU_FAULT=$1} timeout -k 1 5 "$WRAPPER" dump -t "$pid" -D "$d" \
        -o dump.log -v4 >/dev/null 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        [ "$rc" -ge 124 ] && echo "dump did not finish within 5 s (log $d/dump.log)" \
                          || echo "dump failed (log $d/dump.log)"
        return 1
    fi
    wait "$pid" 2>/dev/null
    env -u CRIU_CONFIG_FILE ${1:+CRIU_FAULT=$1} timeout -k 1 5 "$WRAPPER" restore -D "$d" \
        -o restore.log -v4 -d --pidfile "$d/restored.pid" >/dev/null 2>&1
    rc=$?
    [ -s "$d/restored.pid" ] && kill -9 "$(cat "$d/restored.pid")" 2>/dev/null
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -ge 124 ] && echo "restore did not finish within 5 s (log $d/restore.log)" \
                          || echo "restore failed (log $d/restore.log)"
        return 1
    fi
    rm -rf "$d"
}
cpu=$(grep -m5 -E '^(vendor_id|cpu family|model|model name|stepping)[[:space:]]*:' /proc/cpuinfo | tr '\n' ';')
key=$(printf '%s|%s|%s' "$("$WRAPPER" --version | head -1)" "$(uname -rv)" "$cpu" | sha256sum | cut -c1-16)
stamp=/var/cache/warmpool/install-probe-$key
if [ -s "$stamp" ]; then
    say "criu probe (cached): $(cat "$stamp")"
else
    mkdir -p /var/cache/warmpool
    if why=$(probe_mode ""); then
        verdict="default mode works"
    elif why2=$(probe_mode 130); then
        verdict="only the no-breakpoints mode works (default mode: $why): warmpool runs every criu with CRIU_FAULT=130"
    else
        verdict="NO mode works (default: $why; no-breakpoints: $why2): nodes will boot every sandbox cold"
    fi
    echo "$verdict" >"$stamp"
    say "criu probe: $verdict"
fi
# --- lazy restores in a user namespace --------------------------------------
# criu opens each restored task's userfaultfd from the task itself, inside
# the sandbox's user namespace, where only vm.unprivileged_userfaultfd=1
# allows it (the kernel checks CAP_SYS_PTRACE in the host's namespace).
# Without it every lazy restore goes eager. The trade-off, as Firecracker's
# snapshot docs make it too: any unprivileged *host* process may then
# handle kernel page faults; sandboxed code still may not (seccomp denies
# userfaultfd(2), /dev has no userfaultfd node: tests/integration/test_escape).
# A node host runs no untrusted host users. WARMPOOL_KEEP_UFFD_SYSCTL=1 opts
# out (lazy restores then go eager; `warmpool doctor` says so).
if [ -z "${WARMPOOL_KEEP_UFFD_SYSCTL:-}" ] && [ -e /proc/sys/vm/unprivileged_userfaultfd ]; then
    conf=/etc/sysctl.d/60-warmpool-userfaultfd.conf
    if [ ! -f "$conf" ]; then
        say "lazy restores in user namespaces: vm.unprivileged_userfaultfd=1 ($conf)"
        cat >"$conf" <<'CONF'
# warmpool: criu restores sandboxes lazily (userfaultfd) from inside their
# user namespace, which needs this. Sandboxed code cannot use userfaultfd
# (its seccomp filter denies it). Remove to make lazy restores eager.
vm.unprivileged_userfaultfd = 1
CONF
    fi
    sysctl -q -p "$conf" >/dev/null   # the file's value: an operator's edit wins
fi
say "done"
