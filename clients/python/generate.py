"""Generates the gRPC stubs of steer.v1 from proto/ with grpcio-tools (never edit them by hand).

    python clients/python/generate.py

writes src/steer_client/_proto/steer/v1/{tensor,activation,generation}_pb2(_grpc).py.
"""
import pathlib
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "src" / "steer_client" / "_proto"

OUT.mkdir(parents=True, exist_ok=True)
files = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "steer" / "v1").glob("*.proto"))
code = protoc.main(["grpc_tools.protoc", f"-I{PROTO}", f"--python_out={OUT}", f"--grpc_python_out={OUT}", *files])
if code != 0:
    sys.exit(code)
for d in [OUT / "steer", OUT / "steer" / "v1"]:
    (d / "__init__.py").touch()
print("generated", ", ".join(files), "into", OUT)
