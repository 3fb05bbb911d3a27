# nix-store --serve --write, after one byte that says whether zstd is on
# the PATH (Z or N): nixpipe-copy --compress zstd. "$@": nix-store's options.
if command -v zstd >/dev/null 2>&1; then printf Z; else printf N; fi
exec nix-store --serve --write "$@"
