#!/usr/bin/env bash
# make test: the unit tests, then the end-to-end tests once per row of the
# Nix matrix: the deployer's Nix -> the targets' Nix, each a Debian release's
# nix-bin (bookworm 2.8, trixie 2.26, sid 2.34). Every scenario runs from
# old to new and from new to old; copy and eval also from 2.26, and from new
# to new; every scenario once more with every host booting systemd (but the
# boot loaders' VMs, whose guests boot no systemd); and what
# copies once more over the daemon protocol, to and from Nix 2.8 and 2.34.
# With NIX=R (and TARGET_NIX=R, default sid; PROTOCOL=daemon) only that row
# runs:
#   make test NIX=sid TARGET_NIX=bookworm
set -euo pipefail
cd "$(dirname "$0")/.."

all=(aarch64 activate bundle cli copy deploy display eval fleet formats install keys microvm nixos protocol shells status testbed vms)
# Boots through a boot loader in real VMs (guests on the target release).
booting=(boot_once)
# Everything that copies, once more with every copy over the daemon protocol.
copying=(copy eval fleet microvm protocol)
# deployer target init protocol scenarios...
rows=(
    "bookworm sid none auto ${all[*]} ${booting[*]}"
    "sid bookworm none auto ${all[*]} ${booting[*]}"
    "trixie sid none auto copy eval"
    "sid sid none auto copy eval"
    "sid sid systemd auto ${all[*]}"
    "bookworm sid none daemon ${copying[*]}"
    "sid bookworm none daemon ${copying[*]}"
)
if [ -n "${NIX:-}" ]; then
    rows=("$NIX ${TARGET_NIX:-sid} ${TARGET_INIT:-none} ${PROTOCOL:-auto} ${all[*]} ${booting[*]}")
fi

# The release roots first, each made once and kept (a few minutes each on a
# new machine), so that no test waits for one.
for row in "${rows[@]}"; do
    read -r deployer target _ <<<"$row"
    for release in "$deployer" "$target"; do
        [ "$release" = machine ] || bash scripts/release-root.sh "$release" "/var/cache/nixpipe-testbed/$release"
    done
done

cargo test --workspace --locked --exclude nixpipe-tests
cargo test --locked -p nixpipe-tests --lib --bins

summary=() passed=0 failed=0
for row in "${rows[@]}"; do
    read -r deployer target init protocol tests <<<"$row"
    args=()
    for t in $tests; do args+=(--test "$t"); done
    name="$deployer -> $target$([ "$init" = none ] || echo ", every host booting $init")"
    name+="$([ "$protocol" = auto ] || echo ", copies over the $protocol protocol")"
    echo "=== deployer's Nix -> targets' Nix: $name: $tests" >&2
    log=$(mktemp)
    status=0
    NIXPIPE_TEST_DEPLOYER_NIX=$deployer NIXPIPE_TEST_TARGET_NIX=$target NIXPIPE_TEST_TARGET_INIT=$init \
        NIXPIPE_COPY_PROTOCOL=$protocol \
        cargo test --locked --no-fail-fast -p nixpipe-tests "${args[@]}" 2>&1 | tee "$log" || status=$?
    p=$(awk '/^test result:/ { s += $4 } END { print s + 0 }' "$log")
    f=$(awk '/^test result:/ { s += $6 } END { print s + 0 }' "$log")
    rm -f "$log"
    passed=$((passed + p)) failed=$((failed + f))
    summary+=("$name: $p passed, $f failed$([ "$status" = 0 ] || echo " (exit $status)")")
    [ "$status" = 0 ] || failed=$((failed + (f == 0)))
done
echo >&2
printf '%s\n' "${summary[@]}" >&2
echo "matrix: $passed passed, $failed failed"
[ "$failed" = 0 ]
