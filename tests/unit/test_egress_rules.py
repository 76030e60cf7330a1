"""An egress rule's CIDR is accepted exactly when it is one: the plain IPv4 form is recognised without building
the network, every other form is left to ipaddress."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from tourniquet.models.bundle import EgressRule

CIDRS = [
    "10.20.0.0/16",
    "10.20.0.1/16",  # host bits set: accepted, as ever
    "0.0.0.0/0",
    "255.255.255.255/32",
    "203.0.113.7",  # no prefix: one address
    "10.0.0.0/255.255.0.0",  # a netmask instead of a prefix
    "10.0.0.0/08",
    "2001:db8::/32",
    "::1/128",
    "010.0.0.0/8",  # a leading zero in an octet
    "1.2.3.4/33",
    "256.0.0.0/8",
    "\u0661\u0660.0.0.0/8",  # digits, but not ASCII ones
    "10.0.0/8",
    "10.0.0.0/",
    "10.0.0.0/-1",
    " 10.0.0.0/8",
    "10.0.0.0/8\n",
    "ten.0.0.0/8",
]


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("cidr", CIDRS)
def test_a_cidr_is_accepted_exactly_when_ipaddress_takes_it_as_a_network(cidr: str) -> None:
    if _is_network(cidr):
        assert EgressRule(cidr=cidr, ports=[443]).cidr == cidr
    else:
        with pytest.raises(ValidationError, match=r"is not a CIDR such as 10\.20\.0\.0/16"):
            EgressRule(cidr=cidr, ports=[443])
