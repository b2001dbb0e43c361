"""The command line: flags (no JAX on ``--help``) and the commands. Imports any package; none imports it."""
