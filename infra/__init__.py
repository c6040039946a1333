"""Things that start servers: the local fake exchange, deployments, UI launchers."""
