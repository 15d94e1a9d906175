"""`python -m ffclip_jax COMMAND ...`: the same as the `ffclip` console script (`ffclip_jax.cli.main`)."""
from ffclip_jax.cli.main import run

if __name__ == "__main__":
    run()
