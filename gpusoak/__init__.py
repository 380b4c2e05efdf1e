"""gpusoak: can this node's GPUs be reset and reused, again and again, under load, without a reboot?"""

__version__ = "0.1.0"
