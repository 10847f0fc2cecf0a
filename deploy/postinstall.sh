#!/bin/sh
# postinstall.sh - what an install needs beyond files: the system user the
# scheduler runs as, /etc/warmpool's ownership, the vault key, and
# `warmpool doctor` (what this host still needs, each item with its fix).
# Run by the Debian package's postinst; by hand after `make install`:
#   sudo PREFIX=/opt/warmpool /opt/warmpool/share/warmpool/postinstall.sh
# Idempotent. Never fails the install because of the host (doctor reports).
set -e
PREFIX=${PREFIX:-/opt/warmpool}
ETC=/etc/warmpool

# The scheduler needs no privilege: a system user, no home, no shell. The
# node runs as root (namespaces, cgroups, mounts, criu).
if ! getent passwd warmpool >/dev/null; then
    if command -v adduser >/dev/null; then
        adduser --system --group --no-create-home --home /nonexistent --quiet warmpool
    else
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin warmpool
    fi
fi

install -d -m 750 -o root -g warmpool "$ETC"
for f in "$ETC"/scheduler.conf "$ETC"/node.conf "$ETC"/scheduler.env "$ETC"/metrics-token; do
    [ -e "$f" ] && chown root:warmpool "$f" && chmod 640 "$f"
done

# Every scheduler of a deployment must share this key (copy it to the
# others); made once, never replaced: stored credentials need it.
if [ ! -e "$ETC/vault.key" ]; then
    umask 027
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$ETC/vault.key.new"
    echo >> "$ETC/vault.key.new"
    chown root:warmpool "$ETC/vault.key.new"
    chmod 640 "$ETC/vault.key.new"
    mv "$ETC/vault.key.new" "$ETC/vault.key"
fi

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi

echo "warmpool: checking this host (warmpool doctor):"
"$PREFIX/bin/warmpool" doctor || echo "warmpool: doctor found something to fix (above); the install itself is done"
exit 0
