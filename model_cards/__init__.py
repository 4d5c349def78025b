"""Model-card templates rendered by ``mdp-hub export`` (shipped in the wheel as package data)."""
