"""``python -m ip2p``: the ``ip2p`` command."""
if __name__ == "__main__":
    from ip2p.launch import run

    run()
