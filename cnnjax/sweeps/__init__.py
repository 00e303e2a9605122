"""Many runs: sweep grids, populations trained as one program, results over settings."""
