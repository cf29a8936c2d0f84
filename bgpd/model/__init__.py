"""Resources (Calico v3 kinds and field names) and their validation.

Load YAML with `load_documents`, give resources back with `to_dict`/`to_yaml`; every rejection is
a `ResourceError` naming the source, document, kind/name and field path.
"""

from .base import CALICO_API, FieldError, ObjectMeta, Resource, ResourceError
from .bgp import BGPConfiguration, BGPFilter, BGPPeer, Node
from .endpoints import HostEndpoint, WorkloadEndpoint
from .ipam import IPAMConfiguration, IPPool, IPReservation, check_pool_overlap
from .k8s import K8S_NETWORKING_API, K8sNetworkPolicy
from .policy import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkPolicy,
    NetworkSet,
    Profile,
    Rule,
    Tier,
)
from .registry import KINDS, from_dict, load_documents, to_dict, to_yaml

__all__ = [
    "CALICO_API",
    "K8S_NETWORKING_API",
    "KINDS",
    "BGPConfiguration",
    "BGPFilter",
    "BGPPeer",
    "FieldError",
    "GlobalNetworkPolicy",
    "GlobalNetworkSet",
    "HostEndpoint",
    "IPAMConfiguration",
    "IPPool",
    "IPReservation",
    "K8sNetworkPolicy",
    "NetworkPolicy",
    "NetworkSet",
    "Node",
    "ObjectMeta",
    "Profile",
    "Resource",
    "ResourceError",
    "Rule",
    "Tier",
    "WorkloadEndpoint",
    "check_pool_overlap",
    "from_dict",
    "load_documents",
    "to_dict",
    "to_yaml",
]
