"""Raw bytes: TCP mode, and the tunnels of Upgrades."""
