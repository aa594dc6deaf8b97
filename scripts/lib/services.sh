# Services the test suite needs, started on loopback in a throwaway folder and
# stopped by `stop_services`. Sourced by scripts/test (and other scripts).
# Each start_* function installs what is missing on a fresh machine, starts
# the service, waits until it answers, and exports how to reach it.

SERVICES_STOP=()

log() { printf '[services] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# A port picked by free_port may be taken by another process before the
# service binds it (none of these servers can bind port 0 and report it):
# each start_* tries up to PORT_TRIES ports, and only a bind failure moves
# on to the next one.
PORT_TRIES=5

bind_failed() { grep -qiE 'address already in use|could not bind|cannot bind' "$1" 2>/dev/null; }

# listens PORT PID: whether process PID (not whoever took the port) is
# listening on 127.0.0.1:PORT.
listens() {
  local port=$1 pid=$2
  kill -0 "$pid" 2>/dev/null || return 1
  if command -v ss >/dev/null; then
    ss -Hltnp "sport = :$port" 2>/dev/null | grep -q "pid=$pid,"
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

ensure_postgres_installed() {
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then return; fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -n "$bin" ] && [ -x "$bin/initdb" ]; then export PATH="$bin:$PATH"; return; fi
  log "installing PostgreSQL"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  export PATH="$bin:$PATH"
}

# start_postgres DIR: a fresh cluster in DIR on a free loopback port.
# Exports CPSYNC_TEST_PG_URL (a superuser URL to the "postgres" database).
start_postgres() {
  local dir=$1 port user run attempt
  ensure_postgres_installed
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$dir"; chmod 700 "$dir"
    user=postgres
    run() { runuser -u postgres -- "$@"; }
  else
    user=$(id -un)
    run() { "$@"; }
  fi
  run initdb -D "$dir/data" -U "$user" -A trust --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  for attempt in $(seq 1 "$PORT_TRIES"); do
    port=$(free_port)
    if run pg_ctl -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
      start >/dev/null; then
      break
    fi
    if ! bind_failed "$dir/server.log" || [ "$attempt" = "$PORT_TRIES" ]; then
      cat "$dir/server.log" >&2; return 1
    fi
    log "PostgreSQL: port $port was taken meanwhile; another port"
    : >"$dir/server.log"
  done
  SERVICES_STOP+=("run_stop_postgres '$dir' '$user'")
  export CPSYNC_TEST_PG_URL="postgres://$user@127.0.0.1:$port/postgres"
  log "PostgreSQL $(run postgres --version | awk '{print $3}') on 127.0.0.1:$port"
}

run_stop_postgres() {
  local dir=$1 user=$2
  if [ "$user" = postgres ] && [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  else
    pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
}

ensure_sshd_installed() {
  if command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; then return; fi
  log "installing OpenSSH server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
}

# start_sshd DIR: an SFTP-only OpenSSH server on a free loopback port, with
# its own config, host key and authorized key in DIR (nothing system-wide is
# touched but /run/sshd). The current user logs in with a generated key.
# Exports CPSYNC_TEST_SFTP_HOST, _PORT, _USER, _KEY (client private key),
# _KNOWN_HOSTS (a known_hosts file with the server's key) and _DIR (a
# folder the tests may upload into).
start_sshd() {
  local dir=$1 port sshd user tries attempt
  ensure_sshd_installed
  sshd=$(command -v sshd || echo /usr/sbin/sshd)
  user=$(id -un)
  mkdir -p "$dir/remote"
  chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -C cpsync-test-host -f "$dir/host_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C cpsync-test-client -f "$dir/client_ed25519"
  cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
  chmod 600 "$dir/authorized_keys"
  if [ "$(id -u)" = 0 ]; then mkdir -p /run/sshd && chmod 755 /run/sshd; fi
  for attempt in $(seq 1 "$PORT_TRIES"); do
    port=$(free_port)
    write_sshd_config "$dir" "$port" "$user"
    "$sshd" -t -f "$dir/sshd_config" || return 1
    : >"$dir/sshd.log"
    "$sshd" -f "$dir/sshd_config" -E "$dir/sshd.log" || { cat "$dir/sshd.log" >&2; return 1; }
    for tries in $(seq 1 50); do
      if bind_failed "$dir/sshd.log"; then break; fi
      if [ -s "$dir/sshd.pid" ] && listens "$port" "$(cat "$dir/sshd.pid")"; then break 2; fi
      if [ "$tries" = 50 ]; then log "sshd did not answer"; cat "$dir/sshd.log" >&2; return 1; fi
      sleep 0.1
    done
    run_stop_sshd "$dir"
    if [ "$attempt" = "$PORT_TRIES" ]; then cat "$dir/sshd.log" >&2; return 1; fi
    log "sshd: port $port was taken meanwhile; another port"
  done
  SERVICES_STOP+=("run_stop_sshd '$dir'")
  export CPSYNC_TEST_SFTP_HOST=127.0.0.1 CPSYNC_TEST_SFTP_PORT=$port CPSYNC_TEST_SFTP_USER=$user
  export CPSYNC_TEST_SFTP_KEY=$dir/client_ed25519 CPSYNC_TEST_SFTP_KNOWN_HOSTS=$dir/known_hosts
  export CPSYNC_TEST_SFTP_DIR=$dir/remote
  log "$("$sshd" -V 2>&1 | head -n1 | cut -d, -f1) (SFTP only) on 127.0.0.1:$port as $user"
}

# write_sshd_config DIR PORT USER: the server's config and the client's
# known_hosts line for that port.
write_sshd_config() {
  local dir=$1 port=$2 user=$3
  printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$dir/host_ed25519.pub")" >"$dir/known_hosts"
  cat >"$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
ForceCommand internal-sftp
LogLevel VERBOSE
EOF
}

run_stop_sshd() {
  local pid
  pid=$(cat "$1/sshd.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
}

stop_services() {
  local i
  for ((i = ${#SERVICES_STOP[@]} - 1; i >= 0; i--)); do eval "${SERVICES_STOP[$i]}"; done
  SERVICES_STOP=()
}

# Where tools the tests install for themselves (Python venvs) are cached.
tools_dir() { echo "${CPSYNC_TOOLS_DIR:-$HOME/.cache/cpsync-tools}"; }

ensure_python_venv() {
  local venv=$1
  python3 -m venv "$venv" >/dev/null 2>&1 && return
  log "installing python3-venv"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  rm -rf "$venv"
  python3 -m venv "$venv"
}

# Sets AIOSMTPD_PYTHON to a Python that has aiosmtpd (PyPI), installing it
# into a cached venv the first time.
ensure_aiosmtpd() {
  local venv
  venv="$(tools_dir)/aiosmtpd-venv"
  if ! "$venv/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
    log "installing aiosmtpd into $venv"
    mkdir -p "$(tools_dir)"
    ensure_python_venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check aiosmtpd
  fi
  AIOSMTPD_PYTHON=$venv/bin/python
}

# start_smtp DIR: real SMTP servers (aiosmtpd) on free loopback ports, each
# storing what it accepts in its own maildir under DIR (created by the
# server; it must not exist yet), without authentication:
#   plain       CPSYNC_TEST_SMTP_PORT, CPSYNC_TEST_SMTP_MAILDIR
#   STARTTLS    CPSYNC_TEST_SMTP_STARTTLS_PORT, CPSYNC_TEST_SMTP_STARTTLS_MAILDIR
#   implicit    CPSYNC_TEST_SMTP_IMPLICIT_PORT, CPSYNC_TEST_SMTP_IMPLICIT_MAILDIR
# The TLS servers present a certificate for 127.0.0.1 and localhost signed
# by a throwaway CA, whose certificate is CPSYNC_TEST_SMTP_CA (PEM).
start_smtp() {
  local dir=$1 port
  ensure_aiosmtpd
  mkdir -p "$dir"
  chmod 700 "$dir"
  make_test_tls_certificate "$dir/tls"
  run_aiosmtpd "$dir" plain
  export CPSYNC_TEST_SMTP_PORT=$AIOSMTPD_PORT CPSYNC_TEST_SMTP_MAILDIR=$dir/plain
  run_aiosmtpd "$dir" starttls --tlscert "$dir/tls/server.pem" --tlskey "$dir/tls/server.key"
  export CPSYNC_TEST_SMTP_STARTTLS_PORT=$AIOSMTPD_PORT CPSYNC_TEST_SMTP_STARTTLS_MAILDIR=$dir/starttls
  run_aiosmtpd "$dir" implicit --smtpscert "$dir/tls/server.pem" --smtpskey "$dir/tls/server.key"
  export CPSYNC_TEST_SMTP_IMPLICIT_PORT=$AIOSMTPD_PORT CPSYNC_TEST_SMTP_IMPLICIT_MAILDIR=$dir/implicit
  export CPSYNC_TEST_SMTP_CA=$dir/tls/ca.pem
  log "aiosmtpd $("$AIOSMTPD_PYTHON" -m aiosmtpd --version 2>&1 | awk '{print $NF}') on 127.0.0.1: plain $CPSYNC_TEST_SMTP_PORT, STARTTLS $CPSYNC_TEST_SMTP_STARTTLS_PORT, implicit TLS $CPSYNC_TEST_SMTP_IMPLICIT_PORT"
}

# run_aiosmtpd DIR NAME [OPTIONS...]: one server with maildir DIR/NAME;
# waits until it answers, registers its stop, sets AIOSMTPD_PORT. (Not for
# $(...): its stop must be registered in this shell.)
run_aiosmtpd() {
  local dir=$1 name=$2 port pid tries attempt
  shift 2
  for attempt in $(seq 1 "$PORT_TRIES"); do
    port=$(free_port)
    "$AIOSMTPD_PYTHON" -m aiosmtpd -n -l "127.0.0.1:$port" "$@" \
      -c aiosmtpd.handlers.Mailbox "$dir/$name" >"$dir/$name.log" 2>&1 &
    pid=$!
    for tries in $(seq 1 100); do
      if listens "$port" "$pid"; then
        SERVICES_STOP+=("run_stop_smtp $pid")
        AIOSMTPD_PORT=$port
        return 0
      fi
      if ! kill -0 "$pid" 2>/dev/null || [ "$tries" = 100 ]; then break; fi
      sleep 0.1
    done
    run_stop_smtp "$pid"
    if ! bind_failed "$dir/$name.log" || [ "$attempt" = "$PORT_TRIES" ]; then
      log "aiosmtpd ($name) did not start"; cat "$dir/$name.log" >&2; return 1
    fi
    log "aiosmtpd ($name): port $port was taken meanwhile; another port"
  done
}

# make_test_tls_certificate DIR: ca.pem, and server.pem/server.key for
# 127.0.0.1 and localhost signed by it (valid two days).
make_test_tls_certificate() {
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=cpsync test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
}

run_stop_smtp() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Makes sure headless Chromium (Debian's chromium) is installed.
# promtool (Debian's prometheus package) for checking the metrics file.
ensure_promtool() {
  if command -v promtool >/dev/null; then return; fi
  log "installing promtool (Debian's prometheus package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start a Prometheus server; the tests need only promtool.
  as_root systemctl stop prometheus >/dev/null 2>&1 || true
  as_root pkill -x prometheus >/dev/null 2>&1 || true
}

ensure_chromium() {
  if command -v chromium >/dev/null; then return; fi
  log "installing Chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

# render_png HTML PNG [WIDTH,HEIGHT]: screenshots a local HTML file with
# headless Chromium, offline and with a throwaway profile.
render_png() {
  local html=$1 png=$2 size=${3:-1200,2000} profile
  ensure_chromium
  profile=$(mktemp -d "${TMPDIR:-/tmp}/cpsync-chromium.XXXXXX")
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" --screenshot="$png" --window-size="$size" \
    "file://$html" >"$profile.log" 2>&1 || { cat "$profile.log" >&2; rm -rf "$profile" "$profile.log"; return 1; }
  rm -rf "$profile" "$profile.log"
}

# overflow_at HTML WIDTH: loads a local HTML file in an iframe WIDTH pixels
# wide (headless Chromium keeps windows wider than a phone, an iframe does
# not; without a scrollbar, as on a phone) and prints what reaches past the
# frame's viewport: nothing when the
# page fits, else "WIDTH_SEEN TAG.class:RIGHT ...".
overflow_at() {
  local html=$1 width=$2 dir profile probe
  ensure_chromium
  dir=$(mktemp -d "${TMPDIR:-/tmp}/cpsync-overflow.XXXXXX")
  sed 's#</body>#<script>window.onload=function(){var v=document.documentElement.clientWidth;var bad=[];document.querySelectorAll("body *").forEach(function(e){var r=e.getBoundingClientRect();if(r.width>0\&\&r.right>v+1)bad.push(e.tagName+"."+e.className+":"+Math.round(r.right));});parent.postMessage(bad.length?v+" "+bad.slice(0,10).join(" "):"fits","*");}</script></body>#' "$html" >"$dir/inner.html"
  printf '<html><body><iframe src="inner.html" scrolling="no" style="width:%spx;height:12000px;border:0"></iframe><script>addEventListener("message",function(m){document.body.setAttribute("data-probe",m.data);});</script></body></html>\n' "$width" >"$dir/outer.html"
  profile="$dir/profile"
  probe=$(timeout 120 chromium --headless --no-sandbox --disable-gpu --no-first-run \
    --allow-file-access-from-files --user-data-dir="$profile" --window-size=1200,2000 \
    --virtual-time-budget=3000 --dump-dom "file://$dir/outer.html" 2>/dev/null |
    grep -o 'data-probe="[^"]*"' | sed 's/^data-probe="//; s/"$//')
  rm -rf "$dir"
  if [ "$probe" != "fits" ]; then echo "${probe:-no answer from the page}"; fi
}
