# Shared helpers for the scripts in this folder. Source it; do not run it.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Downloads, data and logs of the local services live here (ignored by git).
LOCAL_DIR=${ORDERS_LOCAL_DIR:-$ROOT/.local}

say() { printf '==> %s\n' "$*" >&2; }
fail() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    fail "installing system packages needs root: run as root or install sudo ($*)"
  fi
}

APT_UPDATED=
# Installs the Debian packages given that are not installed yet.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || fail "missing packages (${missing[*]}) and no apt-get to install them"
  say "installing ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || fail "apt-get update failed"
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    fail "apt-get install ${missing[*]} failed"
}

# What the Rust build needs: a C toolchain for rdkafka's bundled librdkafka.
ensure_build_tools() {
  ensure_packages build-essential pkg-config python3 zlib1g-dev
  command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust with rustup (https://rustup.rs)"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Exports the variable $1: as already set, or a development secret of 32
# random bytes (hex) kept in .local/auth/$2 (created once, readable by its
# owner only), described as $3.
ensure_local_secret() {
  local name=$1 file="$LOCAL_DIR/auth/$2"
  [ -n "${!name:-}" ] && return 0
  if [ ! -s "$file" ]; then
    mkdir -p "$LOCAL_DIR/auth"
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file.tmp" && mv "$file.tmp" "$file")
    say "created a development $3 in $file"
  fi
  printf -v "$name" '%s' "$(cat "$file")"
  export "${name?}"
}

# Exports ORDERS_AUTH_HS256_SECRET: as already set, or the development secret
# kept in .local/auth/hs256-secret. Nothing when a JWKS URL is set instead.
ensure_dev_secret() {
  [ -n "${ORDERS_AUTH_JWKS_URL:-}" ] && return 0
  ensure_local_secret ORDERS_AUTH_HS256_SECRET hs256-secret "signing secret"
}

# Exports ORDERS_GATEWAY_TOKEN, which the saga sends the payment gateway and
# the gateway requires: as already set, or the development token kept in
# .local/auth/gateway-token.
ensure_gateway_token() {
  ensure_local_secret ORDERS_GATEWAY_TOKEN gateway-token "payment gateway token"
}

# The tools from package registries that the tests run against the platform,
# pinned in tests/tools/: Python ones (requirements.txt: Schemathesis, the
# CloudEvents SDK, a Kafka client) in a virtual environment under
# .local/python, and npm ones (package.json and its lock: graphql-js, the
# AsyncAPI parser) under .local/node. Each is installed again only when its
# pin file changed.
ensure_test_tools() {
  local tools=$ROOT/tests/tools
  local venv=$LOCAL_DIR/python
  local wanted
  wanted=$(sha256sum "$tools/requirements.txt" | cut -d' ' -f1)
  if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$wanted" ]; then
    say "installing the Python test tools (tests/tools/requirements.txt) into $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      ensure_packages python3-venv
      rm -rf "$venv"
      python3 -m venv "$venv" || fail "python3 -m venv failed"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$tools/requirements.txt" ||
      fail "pip could not install tests/tools/requirements.txt"
    echo "$wanted" >"$venv/.installed"
  fi

  command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm
  local node=$LOCAL_DIR/node
  wanted=$(cat "$tools/package.json" "$tools/package-lock.json" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$node/.installed" 2>/dev/null)" != "$wanted" ]; then
    say "installing the npm test tools (tests/tools/package.json) into $node"
    rm -rf "$node"
    mkdir -p "$node"
    cp "$tools/package.json" "$tools/package-lock.json" "$node/"
    (cd "$node" && npm ci --silent --no-audit --no-fund --ignore-scripts) ||
      fail "npm could not install tests/tools/package.json"
    echo "$wanted" >"$node/.installed"
  fi
}
