#!/usr/bin/env bash
# Build src/zstd-decoder.wasm, zstd's decoder for the JavaScript client, from zstd's own
# sources: the single-file zstd.c (zstd 1.5.7) that python-zstandard 0.25.0's source
# distribution on PyPI carries, checked by the archive's SHA-256. Debian's clang and lld
# (packages clang, lld) compile it for wasm32 with no C library (libc.c, include/), and
# only the decompression entry points are kept (--gc-sections): about 24 KB gzipped.
#
#   bash clients/js/zstd/build.sh           # write src/zstd-decoder.wasm
#   bash clients/js/zstd/build.sh --check   # fail unless the committed file is what the
#                                           # sources build (CI runs this)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../src/zstd-decoder.wasm"
sdist="zstandard-0.25.0.tar.gz"
sha256="7713e1179d162cf5c7906da876ec2ccb9c3a9dcbdffef0cc7f70c3667a205f0b"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip download --quiet --no-binary :all: --no-deps "zstandard==0.25.0" -d "$work"
echo "$sha256  $work/$sdist" | sha256sum -c --quiet
tar -xzf "$work/$sdist" -C "$work" zstandard-0.25.0/zstd/zstd.c
# One thread: the amalgamation turns multithreading on unless it is built by emscripten.
sed 's|^#define ZSTD_MULTITHREAD$|/* single-threaded: built for wasm32 */|' \
    "$work/zstandard-0.25.0/zstd/zstd.c" > "$work/zstd.c"

exports=()
for name in ZSTD_createDCtx ZSTD_createDDict ZSTD_decompress_usingDDict ZSTD_isError \
            ZSTD_getFrameContentSize malloc; do
    exports+=("-Wl,--export=$name")
done
clang --target=wasm32 -O3 -nostdlib -ffreestanding -I"$here/include" \
    -DZSTD_DISABLE_ASM -DXXH_NO_STDLIB -DZSTD_LEGACY_SUPPORT=0 -DDEBUGLEVEL=0 \
    -DZSTD_STRIP_ERROR_STRINGS -Wno-everything \
    -Wl,--no-entry -Wl,--gc-sections -Wl,--strip-all "${exports[@]}" \
    -o "$work/zstd-decoder.wasm" "$work/zstd.c" "$here/libc.c"

if [ "${1:-}" = "--check" ]; then
    if ! cmp -s "$work/zstd-decoder.wasm" "$out"; then
        echo "clients/js/src/zstd-decoder.wasm is not what its sources build: run $0" >&2
        exit 1
    fi
    echo "clients/js/src/zstd-decoder.wasm is built from its sources"
else
    cp "$work/zstd-decoder.wasm" "$out"
    echo "wrote $out ($(wc -c < "$out") bytes, $(gzip -9 -c "$out" | wc -c) gzipped)"
fi
