#!/usr/bin/env bash
# Installs PostgreSQL 15 (Debian's package) when missing and builds TimescaleDB
# (Apache-2 edition) from Debian's trixie source package against it, once.
#
# The Debian mirror is read from this machine's own apt sources; a private apt
# state under the cache directory keeps the machine's apt configuration untouched.
# Later runs find the installed extension and return at once.
set -euo pipefail

TSDB_VERSION="${TSDB_VERSION:-2.19.3}"
PG_MAJOR="${PG_MAJOR:-15}"
CACHE_DIR="${SF_CACHE_DIR:-$(pwd)/.signalfire/cache}"
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_CONFIG="${PG_BIN}/pg_config"

say() { printf '[provision] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        say "apt-get update"
        as_root apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ! -x "${PG_BIN}/postgres" ]; then
    apt_install "postgresql-${PG_MAJOR}"
fi

pkglibdir="$("$PG_CONFIG" --pkglibdir 2>/dev/null || echo "/usr/lib/postgresql/${PG_MAJOR}/lib")"
if [ -f "${pkglibdir}/timescaledb-${TSDB_VERSION}.so" ]; then
    say "TimescaleDB ${TSDB_VERSION} already installed for PostgreSQL ${PG_MAJOR}"
    exit 0
fi

need=()
[ -x "$PG_CONFIG" ] && [ -f "$("$PG_CONFIG" --includedir-server)/postgres.h" ] || need+=("postgresql-server-dev-${PG_MAJOR}")
command -v cmake >/dev/null || need+=(cmake)
command -v gcc >/dev/null || need+=(build-essential)
command -v xz >/dev/null || need+=(xz-utils)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# The machine's Debian mirror: the first URI serving the main archive.
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    mirror=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f")
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { say "no Debian mirror found in the apt sources"; exit 1; }

apt_dir="${CACHE_DIR}/apt"
src_dir="${CACHE_DIR}/timescaledb-src"
mkdir -p "${apt_dir}/lists/partial" "$src_dir"
echo "deb-src ${mirror} trixie main" > "${apt_dir}/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=${apt_dir}/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
          -o "Dir::State::Lists=${apt_dir}/lists" -o "APT::Sandbox::User=root")

tarball=$(ls "$src_dir"/timescaledb_"${TSDB_VERSION}"*.orig.tar.* 2>/dev/null | head -1 || true)
if [ -z "$tarball" ]; then
    say "fetching the timescaledb source package (trixie) from the machine's mirror"
    as_root apt-get "${apt_opts[@]}" update -qq
    (cd "$src_dir" && apt-get "${apt_opts[@]}" source --download-only -qq "timescaledb=${TSDB_VERSION}-*" 2>/dev/null \
        || cd "$src_dir" && apt-get "${apt_opts[@]}" source --download-only -qq timescaledb)
    tarball=$(ls "$src_dir"/timescaledb_"${TSDB_VERSION}"*.orig.tar.* 2>/dev/null | head -1 || true)
    [ -n "$tarball" ] || { say "the mirror did not serve timescaledb ${TSDB_VERSION}"; exit 1; }
fi

build_root="${CACHE_DIR}/timescaledb-build"
rm -rf "$build_root" && mkdir -p "$build_root"
tar -xf "$tarball" -C "$build_root"
tree=$(find "$build_root" -mindepth 1 -maxdepth 1 -type d | head -1)
say "building TimescaleDB ${TSDB_VERSION} (Apache edition) against PostgreSQL ${PG_MAJOR}; about a minute on two cores"
cd "$tree"
./bootstrap -DPG_CONFIG="$PG_CONFIG" -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
    -DWARNINGS_AS_ERRORS=OFF -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF >"$build_root/configure.log" 2>&1 \
    || { tail -40 "$build_root/configure.log"; exit 1; }
# make prints "[ NN%]" as it goes: show those lines only, the rest goes to the log.
set +o pipefail
make -C build -j"$(nproc)" 2>&1 | tee "$build_root/build.log" | grep --line-buffered -oE '^\[ *[0-9]+%\]' | uniq \
    | while read -r pct; do printf '\r[provision] compiling %s' "$pct" >&2; done
status=${PIPESTATUS[0]}
set -o pipefail
printf '\n' >&2
[ "$status" = 0 ] || { tail -40 "$build_root/build.log"; exit 1; }
as_root make -C build install >"$build_root/install.log" 2>&1 || { tail -40 "$build_root/install.log"; exit 1; }
rm -rf "$build_root"
say "TimescaleDB ${TSDB_VERSION} installed into ${pkglibdir}"
