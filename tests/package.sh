#!/usr/bin/env bash
# The Debian package on this machine, with Debian's novnc installed: builds it
# (scripts/package), installs it with apt, checks that websockify, wswrap, the man pages and
# noVNC's novnc_proxy run on our binary (a proxied VNC handshake through a WebSocket), purges
# it and checks that the system is as before (dpkg --audit, apt-get check, /usr/bin/websockify
# and its man page back to what they were, diversions, the websockify user).
#
# Needs root, apt and the novnc package (scripts/install-test-deps installs it). Without them
# it fails under WEBSOCKIFY_REQUIRE_ALL=1 (scripts/test sets it) and otherwise says skipped.
# Usage: tests/package.sh [PATH.deb]   (without an argument it runs scripts/package)
set -euo pipefail
cd "$(dirname "$0")/.."

skip_or_fail() {
    if [ "${WEBSOCKIFY_REQUIRE_ALL:-0}" = 1 ]; then
        echo "tests/package.sh: cannot run: $1 (WEBSOCKIFY_REQUIRE_ALL=1)" >&2
        exit 1
    fi
    echo "skipped: $1"
    exit 0
}
fail() {
    echo "tests/package.sh: FAILED: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || skip_or_fail "installing a package needs root"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || skip_or_fail "no apt/dpkg"
novnc_proxy=/usr/share/novnc/utils/novnc_proxy
[ -x "$novnc_proxy" ] || skip_or_fail "Debian's novnc is not installed (apt-get install novnc)"
command -v man >/dev/null || skip_or_fail "man is not installed (apt-get install man-db)"
if dpkg-query -W -f '${Status}' websockify-rs 2>/dev/null | grep -q 'ok installed'; then
    fail "websockify-rs is already installed; remove it first (apt-get purge websockify-rs)"
fi

if [ $# -ge 1 ]; then
    deb=$1
else
    start=$(date +%s)
    deb=$(scripts/package | tail -n 1)
    echo "== scripts/package took $(($(date +%s) - start)) s"
fi
[ -f "$deb" ] || fail "no package at '$deb'"
deb=$(readlink -f "$deb")
version=$(dpkg-deb -f "$deb" Version)
upstream_version=${version%-*}

# What the machine looks like before, to compare after the purge.
fingerprint() {
    local f
    for f in /usr/bin/websockify /usr/bin/wswrap /usr/share/man/man1/websockify.1.gz \
        /usr/bin/websockify.python /etc/default/websockify \
        /usr/lib/systemd/system/websockify.service; do
        if [ -e "$f" ]; then sha256sum "$f"; else echo "absent $f"; fi
    done
    dpkg-divert --list | grep -i websockify | sort || true
    find /etc/systemd/system -name 'websockify*' | sort
    getent passwd websockify || echo "no user websockify"
    getent group websockify || echo "no group websockify"
    dpkg-query -W -f '${Package} ${Status}\n' novnc websockify python3-websockify 2>/dev/null || true
}
before=$(fingerprint)
[ -z "$(dpkg --audit)" ] || fail "dpkg --audit is not clean before the test: $(dpkg --audit)"

scratch=$(mktemp -d)
pids=()
installed=0
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$installed" = 1 ]; then
        echo "== cleanup: purging websockify-rs"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq websockify-rs >/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

echo "== apt-get install $deb"
installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" \
    >"$scratch/install.log" 2>&1 || fail "apt-get install: $(cat "$scratch/install.log")"

echo "== our binaries, man pages, completions, units, user"
[ "$(head -c 4 /usr/bin/websockify | od -An -c | tr -d ' ')" = '177ELF' ] ||
    fail "/usr/bin/websockify is not our binary"
got=$(/usr/bin/websockify --version)
[ "$got" = "websockify $upstream_version" ] || fail "websockify --version said '$got'"
got=$(env PATH=/usr/sbin:/usr/bin:/sbin:/bin websockify --version)
[ "$got" = "websockify $upstream_version" ] || fail "websockify on PATH said '$got'"
/usr/bin/wswrap --help | grep -q '^Usage: wswrap ' || fail "wswrap --help"
dpkg -S /usr/bin/websockify | grep -q '^diversion by websockify-rs' ||
    [ ! -e /usr/bin/websockify.python ] || fail "no diversion of /usr/bin/websockify"
if dpkg-query -W -f '${Status}' python3-websockify 2>/dev/null | grep -q 'ok installed'; then
    head -n 1 /usr/bin/websockify.python | grep -q python ||
        fail "Python websockify is not kept as /usr/bin/websockify.python"
fi
page=$(man -w websockify)
[ "$page" = /usr/share/man/man1/websockify.1.gz ] || fail "man -w websockify: $page"
zcat "$page" | grep -q 'wswrap' || fail "websockify(1) is not ours"
[ "$(man -w wswrap)" = /usr/share/man/man1/wswrap.1.gz ] || fail "man -w wswrap"
for f in /usr/share/bash-completion/completions/websockify \
    /usr/share/zsh/vendor-completions/_websockify \
    /usr/share/fish/vendor_completions.d/websockify.fish \
    /usr/share/doc/websockify-rs/README.md /etc/default/websockify \
    /usr/lib/systemd/system/websockify.socket; do
    [ -f "$f" ] || fail "missing $f"
done
unit=/usr/lib/systemd/system/websockify.service
grep -qx 'User=websockify' "$unit" || fail "$unit does not run as websockify"
grep -qx 'ExecStart=/usr/bin/websockify $WEBSOCKIFY_ARGS' "$unit" || fail "$unit ExecStart"
getent passwd websockify >/dev/null || fail "no websockify user"
[ -z "$(dpkg --audit)" ] || fail "dpkg --audit after install: $(dpkg --audit)"
apt-get check -qq >/dev/null 2>&1 || fail "apt-get check after install"

echo "== novnc_proxy on our websockify, a fake VNC server behind it"
cat >"$scratch/vnc.py" <<'PY'
# A fake VNC server: sends the RFB version to each client and keeps the connection open.
import socket, sys, threading
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
print(server.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        conn.sendall(b"RFB 003.008\n")
        while conn.recv(4096):
            pass
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
PY
cat >"$scratch/client.py" <<'PY'
# A WebSocket client: the RFB greeting must arrive as a binary frame through the proxy.
import base64, hashlib, os, socket, sys
port = int(sys.argv[1])
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall((
    "GET /websockify HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: binary\r\n\r\n" % (port, key)).encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        sys.exit("connection closed during the handshake: %r" % data)
    data += chunk
head, data = data.split(b"\r\n\r\n", 1)
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit("no 101: %r" % head)
accept = base64.b64encode(hashlib.sha1(
    (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
fields = {name.lower(): value for name, value in fields.items()}
if fields.get("sec-websocket-accept") != accept:
    sys.exit("bad Sec-WebSocket-Accept: %r" % head)
while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
    chunk = sock.recv(4096)
    if not chunk:
        sys.exit("closed before the first frame: %r" % data)
    data += chunk
if data[0] != 0x82 or data[2:2 + (data[1] & 0x7F)] != b"RFB 003.008\n":
    sys.exit("unexpected first frame: %r" % data)
print("proxied RFB handshake:", data[2:2 + (data[1] & 0x7F)])
PY
setsid python3 "$scratch/vnc.py" >"$scratch/vnc.port" &
pids+=($!)
for _ in $(seq 100); do [ -s "$scratch/vnc.port" ] && break; sleep 0.1; done
vnc_port=$(head -n 1 "$scratch/vnc.port")
[ -n "$vnc_port" ] || fail "the fake VNC server did not start"
# novnc_proxy's --listen takes a port number, so it cannot be handed a listener: take a port
# no socket holds now, and start again on another one if something took it meanwhile.
for attempt in 1 2 3 4 5; do
    listen_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
    # A clean PATH: novnc_proxy uses `which websockify`, which must find /usr/bin/websockify.
    (cd "$scratch" && exec setsid env -u RUST_LOG PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        "$novnc_proxy" --vnc "localhost:$vnc_port" --listen "$listen_port" \
        >"$scratch/novnc.log" 2>&1) &
    pids+=($!)
    for _ in $(seq 100); do grep -q 'listening on\|cannot listen\|in use' "$scratch/novnc.log" && break; sleep 0.1; done
    grep -q 'in use' "$scratch/novnc.log" || break
    echo "port $listen_port was taken meanwhile (attempt $attempt), trying another"
done
grep -q 'listening on' "$scratch/novnc.log" || fail "novnc_proxy did not start: $(cat "$scratch/novnc.log")"
grep -q 'Using installed websockify at /usr/bin/websockify' "$scratch/novnc.log" ||
    fail "novnc_proxy did not use /usr/bin/websockify: $(cat "$scratch/novnc.log")"
python3 "$scratch/client.py" "$listen_port" || fail "WebSocket through novnc_proxy; log: $(cat "$scratch/novnc.log")"
status=$(python3 - "$listen_port" <<'PY'
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
conn.request("GET", "/vnc.html")
print(conn.getresponse().status)
PY
)
[ "$status" = 200 ] || fail "GET /vnc.html through novnc_proxy: $status"
for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
done
for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
done
pids=()

echo "== apt-get purge websockify-rs"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq websockify-rs >"$scratch/purge.log" 2>&1 ||
    fail "apt-get purge: $(cat "$scratch/purge.log")"
installed=0
[ -z "$(dpkg --audit)" ] || fail "dpkg --audit after purge: $(dpkg --audit)"
apt-get check -qq >/dev/null 2>&1 || fail "apt-get check after purge"
after=$(fingerprint)
if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "the system differs after the purge"
fi
if dpkg-query -W -f '${Status}' python3-websockify 2>/dev/null | grep -q 'ok installed'; then
    head -n 1 /usr/bin/websockify | grep -q python || fail "Python websockify not restored"
fi
echo "ok: installed, ran noVNC on our websockify, purged; the system is as before"
