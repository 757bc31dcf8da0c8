"""Generates the gRPC stubs of steer.v1 from proto/ with grpcio-tools (never edit them by hand).

    python clients/python/generate.py

writes src/steer_client/_proto/steer/v1/{tensor,activation,generation}_pb2(_grpc).py and typed
stubs (.pyi), with imports made relative so the package adds nothing to sys.path, and checks
that pyproject.toml's dependency floors match what the generated code demands (grpcio's
GRPC_GENERATED_VERSION, protobuf's runtime version check).
"""
import pathlib
import re
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "src" / "steer_client" / "_proto"
V1 = OUT / "steer" / "v1"

OUT.mkdir(parents=True, exist_ok=True)
files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "steer" / "v1").glob("*.proto"))
code = protoc.main(["grpc_tools.protoc", f"-I{PROTO}", f"--python_out={OUT}", f"--pyi_out={OUT}",
                    f"--grpc_python_out={OUT}", *files])
if code != 0:
    sys.exit(code)
for d in [OUT, OUT / "steer", V1]:
    (d / "__init__.py").touch()

# `from steer.v1 import tensor_pb2` would need _proto on sys.path: make it `from . import`.
for f in list(V1.glob("*.py")) + list(V1.glob("*.pyi")):
    text = f.read_text()
    fixed = re.sub(r"^from steer\.v1 import ", "from . import ", text, flags=re.M)
    if fixed != text:
        f.write_text(fixed)

# The versions the generated code requires, against pyproject.toml's floors.
grpc_needs = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (V1 / "generation_pb2_grpc.py").read_text()).group(1)
m = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+)",
              (V1 / "generation_pb2.py").read_text())
proto_needs = ".".join(m.groups())
deps = (HERE / "pyproject.toml").read_text()
want = [f'"grpcio>={grpc_needs},<2"', f'"protobuf>={proto_needs},<{int(m.group(1)) + 1}"']
missing = [w for w in want if w not in deps]
if missing:
    sys.exit(f"pyproject.toml must declare {', '.join(want)} (the generated code demands them); "
             f"regenerate with the grpcio-tools version pinned in its dev extra, or update the pins")
print("generated", ", ".join(files), "into", OUT, f"(needs grpcio>={grpc_needs}, protobuf>={proto_needs})")
