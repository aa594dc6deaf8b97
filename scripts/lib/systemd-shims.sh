# Stand-ins for systemctl, systemd-run and journalctl on a machine without
# systemd as PID 1 (a container, CI), used by scripts/check-install: each
# does what systemd would do from the installed unit files — the unit's
# user and group, Environment= and EnvironmentFile=, StateDirectory= and
# LogsDirectory= (created, owned, 0700), WorkingDirectory=, UMask= and
# ExecStart= (a oneshot runs to its end; a simple service runs in the
# background) — and daemon-reload runs `systemd-analyze verify` on the
# installed units. Usage: bash systemd-shims.sh systemctl|systemd-run|journalctl ARGS...
set -euo pipefail
units=/etc/systemd/system
work=${CHECK_INSTALL_WORK:?CHECK_INSTALL_WORK must name the scratch folder}

die() { echo "$1 shim: $2" >&2; exit 1; }

# unit_values UNIT KEY: every value of KEY= in the unit file, one per line.
unit_values() { sed -n "s/^$2=//p" "$units/$1"; }
unit_value() { unit_values "$1" "$2" | tail -n1; }

# state_dir NAME USER GROUP: /var/lib/NAME, owned, 0700 (StateDirectory=).
state_dir() { mkdir -p "/var/lib/$1"; chown "$2:$3" "/var/lib/$1"; chmod 700 "/var/lib/$1"; }

# env_file FILE: its KEY=VALUE lines as arguments for env (EnvironmentFile=).
env_file() {
  local file=${1#-}
  if [ ! -e "$file" ]; then
    [ "${1:0:1}" = - ] && return 0
    die systemd "EnvironmentFile $file is missing"
  fi
  grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$file" || true
}

start_unit() {
  local unit=$1 user group type dir umask_value code success
  [ -f "$units/$unit" ] || die systemctl "no unit $unit installed in $units"
  user=$(unit_value "$unit" User); group=$(unit_value "$unit" Group)
  type=$(unit_value "$unit" Type); type=${type:-simple}
  local -a environment=()
  while IFS= read -r line; do [ -n "$line" ] && environment+=("$line"); done < <(unit_values "$unit" Environment)
  while IFS= read -r file; do
    while IFS= read -r line; do [ -n "$line" ] && environment+=("$line"); done < <(env_file "$file")
  done < <(unit_values "$unit" EnvironmentFile)
  while IFS= read -r name; do [ -n "$name" ] && state_dir "$name" "$user" "$group"; done < <(unit_values "$unit" StateDirectory)
  while IFS= read -r name; do
    [ -n "$name" ] && { mkdir -p "/var/log/$name"; chown "$user:$group" "/var/log/$name"; chmod 700 "/var/log/$name"; }
  done < <(unit_values "$unit" LogsDirectory)
  dir=$(unit_value "$unit" WorkingDirectory); dir=${dir//%S/\/var\/lib}
  umask_value=$(unit_value "$unit" UMask)
  read -r -a exec_start <<<"$(unit_value "$unit" ExecStart)"
  local -a run=(runuser -u "$user" -g "$group" -- env -i PATH=/usr/local/bin:/usr/bin:/bin "${environment[@]}" "${exec_start[@]}")
  echo "[$unit] as $user in ${dir:-/}: ${exec_start[*]}"
  if [ "$type" = oneshot ]; then
    set +e
    (cd "${dir:-/}" && umask "${umask_value:-0022}" && "${run[@]}") 2>&1 | tee -a "$work/$unit.log"
    code=${PIPESTATUS[0]}
    set -e
    success=" 0 $(unit_value "$unit" SuccessExitStatus) "
    [[ $success == *" $code "* ]] || die systemctl "$unit failed with exit code $code"
    echo "[$unit] finished: exit $code (a success for this unit)"
  else
    (cd "${dir:-/}" && umask "${umask_value:-0022}" && exec "${run[@]}") >>"$work/$unit.log" 2>&1 &
    echo $! >"$work/${unit%.service}.pid"
    sleep 1
    kill -0 "$(cat "$work/${unit%.service}.pid")" 2>/dev/null \
      || { cat "$work/$unit.log" >&2; die systemctl "$unit exited at once"; }
    echo "[$unit] running (pid $(cat "$work/${unit%.service}.pid"))"
  fi
}

systemctl_shim() {
  local command=${1:-}
  shift || true
  case $command in
    daemon-reload)
      local unit out
      for unit in "$units"/cpsync-*; do
        case $unit in *@.service|*@.timer) continue ;; esac
        out=$(systemd-analyze verify --man=no "$unit" 2>&1 || true)
        [ -z "$out" ] || { echo "$out" >&2; die systemctl "systemd-analyze verify $(basename "$unit") is not clean"; }
      done
      echo "daemon-reload: every installed cpsync unit passes systemd-analyze verify"
      ;;
    enable)
      [ "${1:-}" = --now ] || die systemctl "only enable --now is stood in for"
      shift
      local unit
      for unit in "$@"; do
        case $unit in
          *.timer)
            systemd-analyze calendar "$(unit_value "$unit" OnCalendar)" >/dev/null \
              || die systemctl "$unit: OnCalendar does not parse"
            echo "[$unit] enabled: $(unit_value "$unit" OnCalendar)"
            ;;
          *.service) start_unit "$unit" ;;
          *) die systemctl "unknown unit kind: $unit" ;;
        esac
      done
      ;;
    start) for unit in "$@"; do start_unit "$unit"; done ;;
    list-timers)
      systemd-analyze calendar "$(unit_value "$1" OnCalendar)" | sed -n 's/^ *Next elapse: */next: /p'
      ;;
    *) die systemctl "'$command' is not stood in for" ;;
  esac
}

systemd_run_shim() {
  local uid='' gid='' dir=/ value
  local -a environment=()
  while [ $# -gt 0 ]; do
    case $1 in
      --uid=*) uid=${1#--uid=} ;;
      --gid=*) gid=${1#--gid=} ;;
      --wait | --pipe | --quiet | -q) ;;
      -p)
        value=$2; shift
        case $value in
          StateDirectory=*) state_dir "${value#StateDirectory=}" "$uid" "${gid:-$uid}"; dir=/var/lib/${value#StateDirectory=} ;;
          EnvironmentFile=*)
            while IFS= read -r line; do [ -n "$line" ] && environment+=("$line"); done < <(env_file "${value#EnvironmentFile=}")
            ;;
          *) die systemd-run "property $value is not stood in for" ;;
        esac
        ;;
      -E) environment+=("$2"); shift ;;
      --) shift; break ;;
      -*) die systemd-run "option $1 is not stood in for" ;;
      *) break ;;
    esac
    shift
  done
  [ -n "$uid" ] || die systemd-run "--uid is needed"
  (cd "$dir" && runuser -u "$uid" -g "${gid:-$uid}" -- env -i PATH=/usr/local/bin:/usr/bin:/bin "${environment[@]}" "$@")
}

journalctl_shim() {
  local unit=''
  while [ $# -gt 0 ]; do
    case $1 in
      -u) unit=$2; shift ;;
      -f) ;;
    esac
    shift
  done
  [ -n "$unit" ] || die journalctl "-u UNIT is needed"
  unit=${unit%.service}.service
  tail -n 20 "$work/$unit.log" 2>/dev/null || true
}

case ${1:-} in
  systemctl) shift; systemctl_shim "$@" ;;
  systemd-run) shift; systemd_run_shim "$@" ;;
  journalctl) shift; journalctl_shim "$@" ;;
  *) die systemd "unknown shim ${1:-}" ;;
esac
