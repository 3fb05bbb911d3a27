# nix-store --serve --write behind zstd: every request arrives compressed.
# "$@": nix-store's options.
zstd -dcq | exec nix-store --serve --write "$@"
