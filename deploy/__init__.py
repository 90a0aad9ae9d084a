"""Running Lattice: settings, logging, the command line and the local stack."""
