# Sourced by ./test before pytest: starts a throwaway PostgreSQL on loopback and exports TEST_POSTGRES_URL.
# Never fails the test run: without PostgreSQL binaries the postgres tests skip and say why.
_arena_pg_start() {
    if [ -n "${TEST_POSTGRES_URL:-}" ]; then return 0; fi
    local bindir=""
    if command -v initdb >/dev/null 2>&1; then bindir="$(dirname "$(command -v initdb)")";
    elif ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1; then bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)";
    else echo "test-services: no PostgreSQL binaries (initdb) found; postgres tests will skip" >&2; return 0; fi
    local dir port
    dir="$(mktemp -d "${TMPDIR:-/tmp}/arena-pg.XXXXXX")"
    # A port picked by the OS, so parallel runs do not collide.
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    # PostgreSQL refuses to run as root (CI containers often are): run it as `nobody` then.
    local as=()
    if [ "$(id -u)" = 0 ]; then
        if command -v setpriv >/dev/null 2>&1; then as=(setpriv --reuid=nobody --regid=nogroup --init-groups);
        elif command -v runuser >/dev/null 2>&1; then as=(runuser -u nobody --);
        else echo "test-services: running as root and no setpriv/runuser; postgres tests will skip" >&2; return 0; fi
        chown nobody "$dir"; chmod 755 "$dir"
    fi
    if ! "${as[@]}" "$bindir/initdb" -D "$dir/data" -U arena --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1; then
        echo "test-services: initdb failed (see $dir/initdb.log); postgres tests will skip" >&2; return 0; fi
    # fsync off: a test database that is thrown away needs no durability, and it is much faster.
    if ! "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start >/dev/null 2>&1; then
        echo "test-services: PostgreSQL did not start (see $dir/server.log); postgres tests will skip" >&2; return 0; fi
    export TEST_POSTGRES_URL="postgresql+psycopg://arena@127.0.0.1:$port/postgres"
    export ARENA_TEST_PG_DIR="$dir"
    # ./test ends with `exec pytest`, which keeps this PID but drops EXIT traps: a watcher stops the server
    # once that process is gone.
    local owner=$$
    ( while kill -0 "$owner" 2>/dev/null; do sleep 2; done
      "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$dir" ) \
      </dev/null >/dev/null 2>&1 &
    disown 2>/dev/null || true
}
_arena_pg_start
