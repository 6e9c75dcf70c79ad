"""Source prefixes: a package registers ``<prefix>:<name>`` names; the loading layer resolves them."""
from __future__ import annotations

import pytest

from ip2p.errors import ModelLoadError
from ip2p.models import resolve_source
from ip2p.sources import register_source_prefix, registered_prefixes, split_prefix


def test_world_prefix_comes_from_the_entry_point():
    assert "world" in registered_prefixes()
    assert resolve_source("world:ip2p").endswith("weights/ip2p")
    with pytest.raises(ModelLoadError, match="unknown world model 'world:nope'"):
        resolve_source("world:nope")


def test_a_registered_prefix_resolves_and_other_names_pass_through(tmp_path):
    register_source_prefix("mylab", lambda name: tmp_path / name)
    assert resolve_source("mylab:editor-v2") == str(tmp_path / "editor-v2")
    for s in ("C:/models/x", "timbrooks/instructpix2pix", "https://host/x", "unknownprefix:thing", "sd15"):
        assert split_prefix(s) is None
        assert resolve_source(s) == s


def test_a_failing_resolver_is_a_named_load_error():
    def broken(name):
        raise KeyError(name)

    register_source_prefix("broken", broken)
    with pytest.raises(ModelLoadError, match="cannot resolve 'broken:x'"):
        resolve_source("broken:x")
    with pytest.raises(ValueError, match="source prefix"):
        register_source_prefix("Bad Prefix", broken)
