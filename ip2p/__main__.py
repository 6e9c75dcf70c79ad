"""``python -m ip2p``: the ``ip2p`` command."""
from ip2p.launch import run

run()
