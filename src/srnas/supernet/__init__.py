"""Stage 1: the weight-sharing SR supernet (search space, dynamic layers, standalone subnets, sandwich training).

Nothing here registers anything global: subnets are named by their :class:`SubnetConfig`.
"""

from srnas.supernet.space import CellConfig, SearchSpace, SubnetConfig, as_subnet, subnet_macs_per_pixel
from srnas.supernet.subnet import SubnetSR, load_subnet, save_subnet
from srnas.supernet.supernet import SRSupernet, load_supernet, save_supernet

__all__ = [
    "CellConfig",
    "SRSupernet",
    "SearchSpace",
    "SubnetConfig",
    "SubnetSR",
    "as_subnet",
    "load_subnet",
    "load_supernet",
    "save_subnet",
    "save_supernet",
    "subnet_macs_per_pixel",
]
