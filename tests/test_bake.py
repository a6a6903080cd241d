"""Bake's pure parts (controller/bake.py): the Containerfile, the image's name, the baked spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from openeas.controller.bake import Layer, baked_spec, containerfile, image_name
from openeas.spec import parse_spec


@pytest.mark.parametrize(
    "layers,want",
    [
        pytest.param([], "FROM base:1\n", id="nothing-baked"),
        pytest.param(
            [Layer(0, Path("/c/a"), "/mnt/data/", 1)], 'FROM base:1\nCOPY ["l0/", "/mnt/data/"]\n', id="one-mount"
        ),
        # the JSON form: a mount path with a space stays one argument; no trailing slash needed
        pytest.param(
            [Layer(0, Path("/c/a"), "/mnt/data", 1), Layer(2, Path("/c/b"), "/opt/my model", 1)],
            'FROM base:1\nCOPY ["l0/", "/mnt/data/"]\nCOPY ["l1/", "/opt/my model/"]\n',
            id="two-mounts",
        ),
    ],
)
def test_containerfile(layers: list[Layer], want: str) -> None:
    assert containerfile("base:1", layers) == want


def test_image_name_names_service_version_and_content() -> None:
    one = [Layer(0, Path("/c/objects/k1"), "/mnt/data/", 1)]
    other = [Layer(0, Path("/c/objects/k2"), "/mnt/data/", 1)]
    name = image_name("My_Svc", 3, "base:1", one)
    assert name.startswith("localhost/openeas-baked/my_svc:v3-") and len(name.rsplit("-", 1)[1]) == 12
    assert name == image_name("My_Svc", 3, "base:1", one)  # the same content: the same name
    assert name != image_name("My_Svc", 3, "base:1", other)  # other weights: another image


def test_baked_spec_uses_the_image_and_drops_only_the_baked_mounts() -> None:
    spec = parse_spec(
        {
            "metadata": {"name": "s", "instance": 2},
            "containers": [{"image": "base:1", "command": "serve", "port": 8000}],
            "storage": [
                {"mount_path": "/mnt/data/", "oss": {"path": "oss://b/m/"}},
                {"mount_path": "/tmp/scratch", "empty_dir": {}},
            ],
        }
    )
    out = baked_spec(spec, "localhost/openeas-baked/s:v1-abc", [Layer(0, Path("/c/a"), "/mnt/data/", 1)])
    assert out.main.image == "localhost/openeas-baked/s:v1-abc" and out.main.command == "serve"
    assert [m.mount_path for m in out.storage] == ["/tmp/scratch"]
    assert spec.main.image == "base:1" and len(spec.storage) == 2  # the stored version is untouched
