#!/usr/bin/env bash
# make test: shellcheck over every script of the repository. The scripts
# nixpipe runs on hosts are POSIX sh and run behind args.sh and prelude.sh
# (session.rs puts them in front), so each is checked as the host runs it:
# args.sh, the prelude, then the script.
set -euo pipefail
cd "$(dirname "$0")/.."
shellcheck -s bash scripts/*.sh
checked=$(mktemp -d)
trap 'rm -rf "$checked"' EXIT
for script in host/scripts/*.sh; do
    name=${script##*/}
    case $name in
        args.sh | prelude.sh) cp "$script" "$checked/$name" ;;
        serve.sh) cat host/scripts/args.sh "$script" >"$checked/$name" ;;
        *) cat host/scripts/args.sh host/scripts/prelude.sh "$script" >"$checked/$name" ;;
    esac
done
# SC2317: functions called by name ("$@" at the end of a script) look
# unreachable. SC2329 (shellcheck 0.11): the prelude's functions that a
# script does not call (needs_reboot outside the job) are never invoked
# there. SC2154: a script's arguments are set by args.sh's `takes`
# (an eval shellcheck cannot follow); session.rs's test
# every_script_takes_the_arguments_argv_gives_it checks them instead.
(cd "$checked" && shellcheck -s sh -e SC2317,SC2329,SC2154 ./*.sh)
# The bundle's switch script, with its @placeholders@ as Nix fills them in.
sed 's|^#!@shell@|#!/bin/sh|; s|@out@|/nix/store/00000000000000000000000000000000-bundle|g' deploy/nix/bundle-switch.sh >"$checked/bundle-switch"
shellcheck -s sh "$checked/bundle-switch"
