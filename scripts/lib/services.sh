# Services the test suite needs, started on loopback in a throwaway folder and
# stopped by `stop_services`. Sourced by scripts/test (and other scripts).
# Each start_* function installs what is missing on a fresh machine, starts
# the service, waits until it answers, and exports how to reach it.

SERVICES_STOP=()

log() { printf '[services] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
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
  local dir=$1 port user run
  ensure_postgres_installed
  port=$(free_port)
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
  run pg_ctl -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$dir/server.log" >&2; return 1; }
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
  local dir=$1 port sshd user tries
  ensure_sshd_installed
  sshd=$(command -v sshd || echo /usr/sbin/sshd)
  port=$(free_port)
  user=$(id -un)
  mkdir -p "$dir/remote"
  chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -C cpsync-test-host -f "$dir/host_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C cpsync-test-client -f "$dir/client_ed25519"
  cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
  chmod 600 "$dir/authorized_keys"
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
  if [ "$(id -u)" = 0 ]; then mkdir -p /run/sshd && chmod 755 /run/sshd; fi
  "$sshd" -t -f "$dir/sshd_config" || return 1
  "$sshd" -f "$dir/sshd_config" -E "$dir/sshd.log" || { cat "$dir/sshd.log" >&2; return 1; }
  SERVICES_STOP+=("run_stop_sshd '$dir'")
  for tries in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    if [ "$tries" = 50 ]; then log "sshd did not answer"; cat "$dir/sshd.log" >&2; return 1; fi
    sleep 0.1
  done
  export CPSYNC_TEST_SFTP_HOST=127.0.0.1 CPSYNC_TEST_SFTP_PORT=$port CPSYNC_TEST_SFTP_USER=$user
  export CPSYNC_TEST_SFTP_KEY=$dir/client_ed25519 CPSYNC_TEST_SFTP_KNOWN_HOSTS=$dir/known_hosts
  export CPSYNC_TEST_SFTP_DIR=$dir/remote
  log "$("$sshd" -V 2>&1 | head -n1 | cut -d, -f1) (SFTP only) on 127.0.0.1:$port as $user"
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
