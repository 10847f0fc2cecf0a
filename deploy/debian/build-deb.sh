#!/bin/bash
# build-deb.sh BUILD - a Debian package of the tree with dpkg-deb:
# `make install` into a staging root, DEBIAN/ from deploy/debian/, the
# library dependencies from dpkg-shlibdeps, then lintian when installed
# (deploy/debian/lintian-overrides says why each remaining tag is fine).
# Out: BUILD/deb/warmpool_<version>_<arch>.deb
set -euo pipefail
BUILD=${1:-build}
cd "$(dirname "$0")/../.."
PREFIX=/opt/warmpool
ARCH=$(dpkg --print-architecture)
# Who builds it (Debian's DEBFULLNAME/DEBEMAIL), for Maintainer and the changelog.
MAINT="${DEBFULLNAME:-warmpool maintainers} <${DEBEMAIL:-maintainers@warmpool.example.org}>"
VERSION=${WARMPOOL_VERSION:-0.1.0+git$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date +%Y%m%d)}
OUT=$BUILD/deb
ROOT=$OUT/root
rm -rf "$ROOT"
mkdir -p "$ROOT/DEBIAN"
make --no-print-directory -s install BUILD="$BUILD" DESTDIR="$PWD/$ROOT" PREFIX=$PREFIX >/dev/null

# Debian's documentation place: copyright and changelog (lintian wants both).
DOC=$ROOT/usr/share/doc/warmpool
install -d -m 755 "$DOC" "$ROOT/usr/share/lintian/overrides"
install -m 644 deploy/debian/copyright "$DOC/copyright"
printf 'warmpool (%s) unstable; urgency=medium\n\n  * Built from the tree (make deb).\n\n -- %s  %s\n' \
    "$VERSION" "$MAINT" "$(date -R)" | gzip -9n > "$DOC/changelog.gz"
chmod 644 "$DOC/changelog.gz"
install -m 644 deploy/debian/lintian-overrides "$ROOT/usr/share/lintian/overrides/warmpool"
# The operator's command on PATH.
install -d -m 755 "$ROOT/usr/bin"
ln -sf $PREFIX/bin/warmpool "$ROOT/usr/bin/warmpool"
# Binaries are shipped stripped, their debug info kept in the build dir.
for b in "$ROOT$PREFIX"/bin/*; do
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$b"
done

# Library dependencies: dpkg-shlibdeps reads a debian/control next to it.
SHL=$OUT/shlibdeps
rm -rf "$SHL" && mkdir -p "$SHL/debian"
printf 'Source: warmpool\n\nPackage: warmpool\nArchitecture: any\n' > "$SHL/debian/control"
DEPS=$(cd "$SHL" && dpkg-shlibdeps -O $(for b in "$OLDPWD/$ROOT$PREFIX"/bin/*; do printf '%s ' "$b"; done) 2>/dev/null |
       sed -n 's/^shlibs:Depends=//p')

SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@MAINTAINER@|$MAINT|" -e "s|@ARCH@|$ARCH|" -e "s|@DEPENDS@|$DEPS|" -e "s|@SIZE@|$SIZE|" \
    deploy/debian/control > "$ROOT/DEBIAN/control"
for f in postinst prerm postrm conffiles; do
    install -m 755 deploy/debian/$f "$ROOT/DEBIAN/$f"
done
chmod 644 "$ROOT/DEBIAN/conffiles"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -print0 | sed -z 's|^\./||' |
    xargs -0 md5sum) > "$ROOT/DEBIAN/md5sums"
chmod 644 "$ROOT/DEBIAN/md5sums"

DEB=$OUT/warmpool_${VERSION}_$ARCH.deb
rm -f "$OUT"/warmpool_*.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
echo "deb: $DEB"
if command -v lintian >/dev/null; then
    lintian --tag-display-limit 0 "$DEB" || true
fi
