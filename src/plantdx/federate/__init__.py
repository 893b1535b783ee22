"""Federated training on Flower: farms train one model together without pooling their photos.

``partition`` (the farms' shares of the training split) and ``checks`` (what a farm's reply must be to count) need
neither torch nor flwr; ``run`` drives the Flower processes from the main environment; ``client`` and ``server`` are
the Flower apps and run inside the Flower environment (``federate.flower_env``), never in this process. Import the
module you need: this package imports nothing at import time, so Flower's look-up of ``plantdx.federate.client``
stays cheap.
"""
