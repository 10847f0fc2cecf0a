#!/bin/bash
# install_chroot.sh DEB DIR - install the package into a throwaway root and
# remove it again, maintainer scripts included (test_install.c). Runs in a
# mount namespace of its own: the root's /usr is an overlay of the host's
# (so adduser, sh and friends exist, and nothing written reaches the host),
# /etc starts as a copy of the accounts files. Prints what it checks.
set -euo pipefail
DEB=$1
T=$2
mkdir -p "$T"/{root,up,work}
R=$T/root
mkdir -p "$R"/{usr,etc,dev,proc,tmp,var/lib/dpkg/info,var/lib/dpkg/updates,var/log,run}
touch "$R/var/lib/dpkg/status" "$R/var/lib/dpkg/available"
for l in bin lib lib64 sbin; do [ -e "$R/$l" ] || ln -s usr/$l "$R/$l"; done
for f in passwd group shadow gshadow login.defs adduser.conf nsswitch.conf deluser.conf; do
    [ -e /etc/$f ] && cp -p /etc/$f "$R/etc/$f"
done
exec unshare -m --propagation private bash -s "$DEB" "$R" "$T" <<'INNER'
set -euo pipefail
DEB=$1 R=$2 T=$3
mount -t overlay overlay -o lowerdir=/usr,upperdir=$T/up,workdir=$T/work "$R/usr"
mount --bind /dev "$R/dev"
mount -t proc proc "$R/proc"
# The package's own dependencies are the host's business here.
dpkg --root="$R" --force-depends --force-not-root -i "$DEB" > "$T/install.log" 2>&1 ||
    { cat "$T/install.log"; echo "INSTALL FAILED"; exit 1; }
echo "installed: $(dpkg --root="$R" -s warmpool | sed -n 's/^Status: //p')"
grep -q '^warmpool:' "$R/etc/passwd" && echo "user: $(grep '^warmpool:' "$R/etc/passwd" | cut -d: -f1,6,7)"
chroot "$R" stat -c 'etc: %a %U:%G' /etc/warmpool
chroot "$R" stat -c 'vault.key: %a %U:%G' /etc/warmpool/vault.key |
    sed "s/$/ $(tr -d '\n' < "$R/etc/warmpool/vault.key" | wc -c) hex/"
chroot "$R" stat -c 'scheduler.conf: %a %U:%G' /etc/warmpool/scheduler.conf
grep -q 'warmpool doctor' "$T/install.log" && echo "doctor: ran at install"
for b in warmpool warmpool-scheduler warmpool-node warmpool-snap warmpool-hands; do
    [ -x "$R/opt/warmpool/bin/$b" ] && echo "bin: $b"
done
[ -L "$R/usr/bin/warmpool" ] && echo "path: /usr/bin/warmpool"
dpkg --root="$R" --force-not-root --purge warmpool > "$T/purge.log" 2>&1 ||
    { cat "$T/purge.log"; echo "PURGE FAILED"; exit 1; }
left=$(cd "$R" && find opt usr/bin/warmpool lib/systemd/system etc/warmpool -mindepth 0 2>/dev/null | grep -i warmpool || true)
echo "after purge: ${left:-nothing}"
INNER
