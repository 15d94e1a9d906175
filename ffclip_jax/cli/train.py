"""train.py's command line: absl flags with ml_collections' config_flags (`--config FILE`, `--workdir DIR`, any
field as `--config.<path>=<value>`, absl's `--verbosity`). Every flag problem is one line `error: ...` naming the
flag, exit status 2; logs stay at WARNING unless --verbosity asks for more. The loop is ffclip_jax.train.loop."""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from typing import List, Optional

from absl import app, flags
from ml_collections import config_flags

from ffclip_jax import logs
from ffclip_jax.errors import FFCLIPError
from ffclip_jax.train.loop import train_and_evaluate

FIELDS_HELP = "every field and its default: configs/default.py"
config_flags.DEFINE_config_file("config", None, f"config file with get_config(), e.g. configs/ffhq.py ({FIELDS_HELP})",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, logs, grids and exported weights (rerun to resume)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv: Optional[List[str]] = None) -> None:
    """`python train.py ...`: quiet logs, parse the flags, train; an FFCLIPError is one line and exit status 2."""
    logs.quiet()
    FLAGS.set_default("verbosity", -1)  # (shown by --helpfull)
    for name in ("config", "workdir"):  # --help lists the key flags of the script absl runs: these are train.py's
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    app.run(_train, argv=argv, flags_parser=parse_flags)


def _train(argv) -> None:
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except FFCLIPError as e:
        _fail(str(e))


def parse_flags(argv: List[str]) -> List[str]:
    """absl's parsing of train.py's argv, every problem (an unknown flag or config key, a bad value, a missing or
    broken config file, a positional argument) as one line `error: ...` and exit status 2; then logs at the asked
    --verbosity (WARNING by default)."""
    try:
        rest = FLAGS(argv)
        FLAGS.config.keys()  # config files load lazily: surface a missing or broken file here
    except Exception as e:  # absl, config_flags and the config file raise many kinds
        _fail(flag_error(argv, e))
    if len(rest) > 1:
        _fail(f"unexpected argument {rest[1]!r}: train.py takes only flags (--config FILE --workdir DIR "
              f"[--config.<field>=<value> ...]; python train.py --help)")
    logs.set_verbosity(FLAGS.verbosity if FLAGS["verbosity"].present else -1)
    return rest


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def flag_error(argv: List[str], e: Exception) -> str:
    """One line for a parsing failure, found by looking at the arguments themselves (absl's and config_flags'
    messages are multi-line, quoted and do not always name the flag)."""
    path = _flag_value(argv, "config")
    if path is not None:
        if not os.path.isfile(path):
            folder = os.path.dirname(path) or "."
            names = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
            close = difflib.get_close_matches(os.path.basename(path), names, n=1)
            hint = f" (did you mean {os.path.join(os.path.dirname(path), close[0])}?)" if close else ""
            return f"--config {path}: no such file{hint}"
        try:
            config = _load_config(path)
        except Exception as err:  # the user's get_config() raised
            return f"--config {path}: get_config() failed: {type(err).__name__}: {_first_line(err)}"
        for name, value in _overrides(argv):
            problem = _override_problem(config, name, value)
            if problem:
                return problem
    text = _first_line(e)
    required = re.match(r"flag --(\w+)=None: Flag --\1 must have a value other than None", text)
    if required:
        return f"--{required.group(1)} is required: {FLAGS[required.group(1)].help}"
    unknown = re.match(r"Unknown command line flag '([^']+)'", text)
    if unknown:
        return f"--{unknown.group(1)}: unknown flag (python train.py --help lists them)"
    return text


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).replace("\\n", "\n").splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _flag_value(argv: List[str], name: str) -> Optional[str]:
    for i, arg in enumerate(argv[1:], 1):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _overrides(argv: List[str]):
    """(--config.a.b, value) of every override in argv (`--config.a.b=value` or `--config.a.b value`)."""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config."):
            name, eq, value = arg.partition("=")
            yield name, value if eq else (argv[i + 1] if i + 1 < len(argv) else "")


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("_train_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _override_problem(config, name: str, value: str) -> Optional[str]:
    """What is wrong with `--config.a.b=value` for this config (an unknown key, a value of the wrong type), or None."""
    keys = name[len("--config."):].split(".")
    node = config
    for i, key in enumerate(keys):
        if not hasattr(node, "keys") or key not in node.keys():
            close = difflib.get_close_matches(key, list(node.keys()) if hasattr(node, "keys") else [], n=1)
            hint = f" (did you mean --config.{'.'.join(keys[:i] + close + keys[i + 1:])}?)" if close else ""
            return f"{name}: unknown config key {key!r}{hint}; {FIELDS_HELP}"
        node = node[key]
    kind = type(node)
    try:
        if kind is bool and value.lower() not in ("true", "false", "1", "0"):
            raise ValueError
        if kind in (int, float):
            kind(value)
    except ValueError:
        return f"{name}={value}: expected {kind.__name__}, got {value!r}"
    return None
