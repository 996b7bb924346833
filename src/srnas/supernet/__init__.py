"""Stage 1: the weight-sharing SR supernet (dynamic layers, the supernet, sandwich training).

Nothing here registers anything global: subnets are named by their :class:`~srnas.arch.space.SubnetConfig`, and
the standalone networks it hands out are :class:`~srnas.arch.network.SubnetSR`.
"""

from srnas.supernet.supernet import SRSupernet, load_supernet, save_supernet

__all__ = ["SRSupernet", "load_supernet", "save_supernet"]
