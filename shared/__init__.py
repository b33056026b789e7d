"""Domain code of the release orchestrator: the pure gate and the ports around it."""
