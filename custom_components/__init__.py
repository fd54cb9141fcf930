"""Home Assistant custom components shipped in this repository (see edge_inspector/)."""
