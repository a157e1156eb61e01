#!/usr/bin/env bash
# Installs what `just sweep` and `just test` need on a fresh Debian machine with a Rust toolchain:
# `just` (from crates.io) and, when root, two Debian package sets for tests: chromium (the report's
# browser test) and a Vulkan driver (mesa-vulkan-drivers with libvulkan1: lavapipe, a software
# Vulkan driver, so that the wgpu agreement test runs on a machine without a GPU; a GPU's own
# driver serves as well).
set -euo pipefail
if ! command -v just >/dev/null 2>&1; then
    echo "installing just from crates.io"
    cargo install just --locked --quiet
fi

missing=()
if ! command -v chromium >/dev/null 2>&1; then
    missing+=(chromium)
fi
if command -v dpkg-query >/dev/null 2>&1; then
    for package in mesa-vulkan-drivers libvulkan1; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" != installed ]; then
            missing+=("$package")
        fi
    done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${missing[*]} (for the report's browser test and the wgpu test)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "note: ${missing[*]} missing and not root: install them (apt-get install -y ${missing[*]});"
        echo "  until then the report's browser test and the wgpu test are skipped (and fail where CI is set)"
    fi
fi
