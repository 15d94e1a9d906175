"""User-facing errors: one line that says which file, key, shape or value was wrong and what was expected."""


class FFCLIPError(Exception):
    """Base of every error ffclip-jax reports to a user. CLIs print `error: <message>` and exit with status 2."""


class CheckpointError(FFCLIPError):
    """A checkpoint file is missing, unreadable, unsafe or of another model."""


class ConversionError(FFCLIPError):
    """A state dict does not match the model it is converted into (unconsumed keys, missing targets, shapes)."""


class ConfigError(FFCLIPError):
    """A configuration value or a path named in a config is wrong."""


class InputError(FFCLIPError):
    """User data (images, latents, prompts, arrays) has the wrong shape, dtype or content."""


def run_cli(main, argv=None) -> int:
    """Run `main(argv)` with logs at WARNING and the misleading third-party messages silenced (`logs.quiet`),
    turning an FFCLIPError into a one-line message on stderr and exit status 2."""
    import sys

    from ffclip_jax import logs

    logs.quiet()
    try:
        rc = main(argv)
    except FFCLIPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if rc is None else int(rc)
