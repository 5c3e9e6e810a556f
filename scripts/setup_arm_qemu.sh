#!/usr/bin/env bash
# An emulated aarch64 "device" on an x86-64 host: Debian's arm64 Python 3.11 and the
# aarch64 wheels of TVM's runtime, run with qemu-aarch64-static (no binfmt needed).
#
#   scripts/setup_arm_qemu.sh            # prints the cache folder when it is ready
#
# Idempotent: everything lives in $TILECRAFT_ARM_CACHE (default ~/.cache/tilecraft-arm),
# and a finished setup is marked with a .ready file.  Needs root for apt-get (the arm64
# architecture is added to dpkg, packages are only downloaded and unpacked, never installed)
# and network access to the Debian mirror and PyPI.  About 2-4 minutes, ~450 MB on disk.
# Run a script on the device:
#   PYTHONPATH=$CACHE/site qemu-aarch64-static -L $CACHE/sysroot $CACHE/sysroot/usr/bin/python3.11 x.py
set -euo pipefail

CACHE="${TILECRAFT_ARM_CACHE:-$HOME/.cache/tilecraft-arm}"
PYTHON="${PYTHON:-python3}"  # a host Python with pip, used only to download the wheels
TVM_VERSION="0.27.0.post1"
FFI_VERSION="0.1.14.post1"  # 0.1.15.x segfaults on IR serialization (shared/TVM027_NOTES.md)

if [[ -f "$CACHE/.ready" ]]; then
    echo "$CACHE"
    exit 0
fi

log() { echo "[setup_arm_qemu] $*" >&2; }

# 1. host tools: the cross linker and the emulator
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    log "installing g++-aarch64-linux-gnu qemu-user-static"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user-static >/dev/null
fi

# 2. the device's userland: arm64 Python and the libraries it links, unpacked into a sysroot
mkdir -p "$CACHE/deb" "$CACHE/sysroot" "$CACHE/wheels" "$CACHE/site"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding the arm64 architecture to dpkg (download only)"
    dpkg --add-architecture arm64
fi
apt-get update -qq
PACKAGES=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g
          libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6 libreadline8
          libuuid1 libcrypt1 libstdc++6 libgcc-s1 libgomp1 libnsl2 libtirpc3 libdb5.3 libgdbm6)
log "downloading ${#PACKAGES[@]} arm64 packages"
(cd "$CACHE/deb" && apt-get download -qq "${PACKAGES[@]/%/:arm64}")
for deb in "$CACHE"/deb/*.deb; do
    dpkg -x "$deb" "$CACHE/sysroot"
done

# 3. TVM's runtime and numpy for aarch64, unpacked (wheels are zip files) onto the device's path
log "downloading aarch64 wheels"
"$PYTHON" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.11 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_24_aarch64 --platform manylinux_2_28_aarch64 \
    -d "$CACHE/wheels" \
    "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION" numpy ml_dtypes typing_extensions psutil cloudpickle
for whl in "$CACHE"/wheels/*.whl; do
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$CACHE/site"
done

# 4. smoke test: the emulated Python imports TVM (25-60 s under qemu)
log "checking: import tvm under qemu-aarch64"
PYTHONPATH="$CACHE/site" qemu-aarch64-static -L "$CACHE/sysroot" "$CACHE/sysroot/usr/bin/python3.11" \
    -c "import platform, numpy, tvm; assert platform.machine() == 'aarch64'; print('aarch64 tvm', tvm.__version__)" >&2
touch "$CACHE/.ready"
echo "$CACHE"
