#!/bin/sh
# relay-certs.sh - certificates for the agentlink relay's mutual TLS
# (relay-tls-cert, relay-tls-key, relay-tls-ca in node.conf and
# scheduler.conf), with the openssl command line. Keys are EC P-256, made
# 0600 in DIR.
#
#   relay-certs.sh DIR ca                   a relay CA: DIR/ca.pem (give it to every
#                                           node and scheduler), DIR/ca.key (keep it
#                                           off the servers)
#   relay-certs.sh DIR node NAME IP[,IP..]  a node's: DIR/NAME.pem, DIR/NAME.key; the
#                                           IPs are its relay addresses (`listen`),
#                                           which schedulers check
#   relay-certs.sh DIR scheduler NAME       a scheduler's (client only)
#
# Use a CA made for warmpool relays only: any certificate it signs is let
# onto every node's relay (the route's lease key still limits it to the
# sandboxes it claimed).
set -eu

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
dir=$1 kind=$2
mkdir -p "$dir"
umask 077

case $kind in
ca)
    [ ! -e "$dir/ca.key" ] || { echo "relay-certs: $dir/ca.key exists; not replaced" >&2; exit 1; }
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=warmpool relay CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    chmod 0644 "$dir/ca.pem"
    echo "$dir/ca.pem"
    ;;
node|scheduler)
    [ $# -ge 3 ] || usage
    name=$3
    case $name in *[!A-Za-z0-9._-]*|'') echo "relay-certs: bad name '$name'" >&2; exit 2;; esac
    [ -r "$dir/ca.key" ] || { echo "relay-certs: no $dir/ca.key (run: $0 $dir ca)" >&2; exit 1; }
    ext=$(mktemp)
    trap 'rm -f "$ext" "$dir/$name.csr"' EXIT
    if [ "$kind" = node ]; then
        [ $# -ge 4 ] || usage
        san=$(echo "$4" | tr ',' '\n' | sed 's/^/IP:/' | paste -sd, -)
        # A node serves its relay and, in worker mode, dials other nodes'.
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$ext"
    else
        printf 'extendedKeyUsage=clientAuth\n' > "$ext"
    fi
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' >> "$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 825 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
    chmod 0644 "$dir/$name.pem"
    echo "$dir/$name.pem $dir/$name.key"
    ;;
*) usage ;;
esac
