"""Host-side veth names: Calico's cali + 11 hex digits of sha1("<namespace>.<pod>")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.endpoint import EndpointDataplane, EndpointSpec, veth_name, workload_id


def test_matches_calico_golden_name() -> None:
    # printf default.pod1 | sha1sum -> ce0906292e2f...; Calico keeps the first 11 digits.
    assert veth_name(workload_id("default", "pod1")) == "calice0906292e2"


def test_spec_uses_its_own_prefix() -> None:
    spec = EndpointSpec("default", "pod1", "ns", (), prefix="rmx")
    assert spec.host_ifname == "rmxce0906292e2b"


@given(st.text(min_size=1))
def test_names_fit_ifnamsiz_and_are_stable(a: str) -> None:
    na = veth_name(a)
    assert len(na) == 15 and na.startswith("cali")
    assert all(c in "0123456789abcdef" for c in na[4:])
    assert veth_name(a) == na


def test_route_protocol_must_fit_a_byte() -> None:
    for bad in (0, 256, -1):
        with pytest.raises(ValueError, match=str(bad)):
            EndpointDataplane(route_protocol=bad)
