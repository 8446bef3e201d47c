"""HTTP/1.1: client connections, their sans-IO machines, and the pool of app connections."""
