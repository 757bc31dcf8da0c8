"""The package as installed: no top-level modules leak onto sys.path, it is typed, and the
dependency floors it declares match what its generated code demands."""
import importlib.metadata
import importlib.util
import pathlib

import grpc
import google.protobuf

import steer_client


def test_importing_adds_no_top_level_modules():
    assert importlib.util.find_spec("steer") is None, "a top-level `steer` module appeared"


def test_typed_with_stubs():
    pkg = pathlib.Path(steer_client.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_proto" / "steer" / "v1" / "generation_pb2.pyi").exists()


def test_declared_floors_are_met_and_match_the_generated_code():
    from steer_client._proto.steer.v1 import generation_pb2_grpc

    requires = importlib.metadata.requires("steer-client")
    assert f"grpcio<2,>={generation_pb2_grpc.GRPC_GENERATED_VERSION}" in [r.replace(" ", "") for r in requires], requires
    have = tuple(int(x) for x in grpc.__version__.split(".")[:3])
    need = tuple(int(x) for x in generation_pb2_grpc.GRPC_GENERATED_VERSION.split("."))
    assert have >= need
    assert int(google.protobuf.__version__.split(".")[0]) == 7
