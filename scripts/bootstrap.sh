#!/usr/bin/env bash
# Installs what `just sweep` and `just test` need on a fresh Debian machine with a Rust toolchain:
# `just` (from crates.io) and, for the report's browser test, Debian's chromium (when root).
set -euo pipefail
if ! command -v just >/dev/null 2>&1; then
    echo "installing just from crates.io"
    cargo install just --locked --quiet
fi
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium (for the report's browser test)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: chromium is missing; the report's browser test will be skipped (install Debian's chromium to run it)"
    fi
fi
