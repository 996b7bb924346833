"""What a searched network is: the search space and its subnet configurations (:mod:`.space`), pruned descriptions
(:mod:`.pruned`), and the one deployable network class with its saved formats (:mod:`.network`)."""

from srnas.arch.network import SubnetSR, build_network, load_network, save_network
from srnas.arch.pruned import IMAGE_CHANNELS, PrunedSubnet, as_pruned, full_channels, random_pruned, round_channels
from srnas.arch.space import CellConfig, SearchSpace, SubnetConfig, as_subnet, subnet_macs_per_pixel

__all__ = [
    "IMAGE_CHANNELS",
    "CellConfig",
    "PrunedSubnet",
    "SearchSpace",
    "SubnetConfig",
    "SubnetSR",
    "as_pruned",
    "as_subnet",
    "build_network",
    "full_channels",
    "load_network",
    "random_pruned",
    "round_channels",
    "save_network",
    "subnet_macs_per_pixel",
]
