"""Command lines: one thin module per tool (argparse, printing, exit codes); the library is the rest of ffclip_jax."""
